"""Hostile data files and flags: pickles, lying headers, odd HDF5 files and image folders, bad options.

A pickle here never runs in the harness: its payload, if anything ever unpickled it,
would create `PICKLE_RAN_<case>` in the outside folder, which the harness checks.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fuzzing.cases import Case, CaseContext, mutator


class PicklePayload:
    """Unpickling this calls `open(path, "w")`: a file appears where no file may appear."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def sentinel_for(ctx: CaseContext) -> Path:
    return ctx.outside / f"PICKLE_RAN_{ctx.folder.name}"


def _data_case(ctx: CaseContext, data: Path, detail: str, *, expect_ok: bool = False, extra: list[str] = (),
               commands: tuple[str, ...] = ("profile", "prune", "profile", "fine-prune")) -> Case:
    model = ctx.copy_seed()
    args = ctx.command_args(ctx.pick(list(commands)), model, data) + list(extra)
    return Case("", args, detail, expect_ok=expect_ok)


def _samples(ctx: CaseContext, count: int = 12) -> tuple[np.ndarray, np.ndarray]:
    x = ctx.rng.standard_normal((count, *ctx.seed.input_shape)).astype(np.float32)
    return x, ctx.rng.integers(0, ctx.seed.classes, count)


# --------------------------------------------------------------------------- NumPy files
@mutator("pickle_data", weight=3)
def pickle_data(ctx: CaseContext) -> Case:
    ctx.inputs.mkdir(parents=True, exist_ok=True)
    payload = np.array([PicklePayload(sentinel_for(ctx))], dtype=object)
    kind = ctx.pick(["npz_member", "npy_object", "raw_pickle_npz", "raw_pickle_npy", "labels_object"])
    x, y = _samples(ctx)
    path = ctx.inputs / ("data.npy" if kind in ("npy_object", "raw_pickle_npy") else "data.npz")
    if kind == "npz_member":
        np.savez(path, x=payload, y=y)
    elif kind == "labels_object":
        np.savez(path, x=x, y=payload)
    elif kind == "npy_object":
        np.save(path, payload, allow_pickle=True)
    else:
        path.write_bytes(pickle.dumps(PicklePayload(sentinel_for(ctx))))
    return _data_case(ctx, path, kind)


def _npy_bytes(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


@mutator("lying_header", weight=2)
def lying_header(ctx: CaseContext) -> Case:
    """An array header that claims far more samples than the file holds (issue 11, item 10)."""
    ctx.inputs.mkdir(parents=True, exist_ok=True)
    samples = ctx.pick([10**12, 2**40, 10**6, 13])
    raw = _npy_bytes((samples, *ctx.seed.input_shape), "<f4", ctx.rng.bytes(4096))
    if ctx.chance(0.5):
        path = ctx.inputs / "data.npy"
        path.write_bytes(raw)
    else:
        path = ctx.inputs / "data.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", raw)
            archive.writestr("y.npy", _npy_bytes((samples,), "<i8", b"\0" * 64))
    return _data_case(ctx, path, f"header claims {samples} samples")


@mutator("odd_arrays", weight=4)
def odd_arrays(ctx: CaseContext) -> Case:
    ctx.inputs.mkdir(parents=True, exist_ok=True)
    x, y = _samples(ctx)
    kind = ctx.pick(["wrong_shape", "int_x", "complex_x", "bool_x", "string_x", "nan_x", "inf_x", "empty", "scalar_x",
                     "labels_short", "labels_2d", "labels_float", "labels_negative", "labels_huge", "no_labels",
                     "float16_x", "float64_x", "structured_x", "valid", "fortran_x", "zip_junk", "encrypted_flag",
                     "huge_values", "one_sample", "one_class"])
    path = ctx.inputs / "data.npz"
    arrays = {"x": x, "y": y}
    if kind == "wrong_shape":
        arrays["x"] = x.reshape(len(x), -1)
    elif kind == "int_x":
        arrays["x"] = (x * 100).astype(np.int32)
    elif kind == "complex_x":
        arrays["x"] = x.astype(np.complex64)
    elif kind == "bool_x":
        arrays["x"] = x > 0
    elif kind == "string_x":
        arrays["x"] = np.array(["a"] * len(x))
    elif kind == "nan_x":
        x[0].flat[0] = np.nan
    elif kind == "inf_x":
        x[-1].flat[-1] = np.inf
    elif kind == "empty":
        arrays = {"x": x[:0], "y": y[:0]}
    elif kind == "scalar_x":
        arrays["x"] = np.float32(1.0)
    elif kind == "labels_short":
        arrays["y"] = y[:-2]
    elif kind == "labels_2d":
        arrays["y"] = np.stack([y, y], axis=1)
    elif kind == "labels_float":
        arrays["y"] = y.astype(np.float32)
    elif kind == "labels_negative":
        arrays["y"] = -y - 1
    elif kind == "labels_huge":
        arrays["y"] = (y + 2**62).astype(np.uint64)
    elif kind == "no_labels":
        del arrays["y"]
    elif kind == "float16_x":
        arrays["x"] = x.astype(np.float16)
    elif kind == "float64_x":
        arrays["x"] = x.astype(np.float64)
    elif kind == "structured_x":
        arrays["x"] = np.zeros(len(x), dtype=[("a", "<f4"), ("b", "<i4")])
    elif kind == "fortran_x":
        arrays["x"] = np.asfortranarray(x)
    elif kind == "huge_values":
        arrays["x"] = x * np.float32(1e37)
    elif kind == "one_sample":
        arrays = {"x": x[:1], "y": y[:1]}
    elif kind == "one_class":
        arrays["y"] = np.zeros_like(y)
    if kind == "zip_junk":
        np.savez(path, **arrays)
        raw = bytearray(path.read_bytes())
        for position in ctx.rng.integers(0, len(raw), 8):
            raw[position] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif kind == "encrypted_flag":
        np.savez(path, **arrays)
        raw = bytearray(path.read_bytes())
        raw[6] |= 1  # general-purpose flag bit 0 of the first local header: "encrypted"
        path.write_bytes(bytes(raw))
    else:
        np.savez(path, **arrays)
    valid = kind in ("valid", "float16_x", "float64_x", "fortran_x", "one_class")
    return _data_case(ctx, path, kind, expect_ok=valid)


# --------------------------------------------------------------------------- HDF5
@mutator("odd_hdf5", weight=3)
def odd_hdf5(ctx: CaseContext) -> Case:
    import h5py

    ctx.inputs.mkdir(parents=True, exist_ok=True)
    x, y = _samples(ctx)
    path = ctx.inputs / "data.h5"
    kind = ctx.pick(["valid", "scalar_x", "group_x", "external_link", "virtual", "external_storage", "unallocated",
                     "string_x", "compound_x", "group_y", "labels_2d", "empty", "truncated", "bit_flip", "soft_link",
                     "dangling_soft_link"])
    with h5py.File(path, "w") as file:
        if kind == "scalar_x":
            file["x"] = 1.0
        elif kind == "group_x":
            file.create_group("x")
        elif kind == "external_link":
            file["x"] = h5py.ExternalLink(str(ctx.outside / "other.h5"), "/x")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=x.shape, dtype="f4")
            layout[:] = h5py.VirtualSource(str(ctx.outside / "other.h5"), "x", shape=x.shape)
            file.create_virtual_dataset("x", layout)
        elif kind == "external_storage":
            file.create_dataset("x", shape=x.shape, dtype="f4",
                                external=[(str(ctx.outside / "secret.bin"), 0, x.nbytes)])
        elif kind == "unallocated":
            file.create_dataset("x", shape=(10**12, *x.shape[1:]), dtype="f4", chunks=(1, *x.shape[1:]))
        elif kind == "string_x":
            file["x"] = np.array([b"abc"] * len(x))
        elif kind == "compound_x":
            file["x"] = np.zeros(len(x), dtype=[("a", "<f4"), ("b", "<i4")])
        elif kind == "empty":
            file["x"] = x[:0]
        elif kind == "soft_link":
            file["data/x"] = x
            file["x"] = h5py.SoftLink("/data/x")
        elif kind == "dangling_soft_link":
            file["x"] = h5py.SoftLink("/nowhere")
        else:
            file["x"] = x
        if kind == "group_y":
            file.create_group("y")
        elif kind == "labels_2d":
            file["y"] = np.stack([y, y], axis=1)
        elif kind not in ("empty",):
            file["y"] = y
        elif kind == "empty":
            file["y"] = y[:0]
    if kind in ("truncated", "bit_flip"):
        raw = bytearray(path.read_bytes())
        if kind == "truncated":
            raw = raw[: int(ctx.rng.integers(0, len(raw)))]
        else:
            for position in ctx.rng.integers(0, len(raw), 16):
                raw[position] ^= 0xFF
        path.write_bytes(bytes(raw))
    return _data_case(ctx, path, kind, expect_ok=kind in ("valid", "soft_link"))


# --------------------------------------------------------------------------- image folders
def _png(width: int, height: int, pixels: np.ndarray | None = None) -> bytes:
    """A PNG: grayscale 8-bit with the given pixels, or only a header claiming width x height."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    body = b"" if pixels is None else chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.tobytes() for row in pixels)))
    return b"\x89PNG\r\n\x1a\n" + header + body + chunk(b"IEND", b"")


CLASS_NAMES = {
    "numbers": ["0", "1", "2"],
    "thirty_digits": ["0", "1", "9" * 30],
    "superscript": ["0", "1", "²"],
    "arabic_digits": ["0", "١", "2"],
    "mixed": ["1", "cat", "0"],
    "unicode": ["chat", "chien", "ñandú"],
    "odd_characters": ["a b", "-1", " 3", "1e5"],
}


@mutator("image_folder", weight=3)
def image_folder(ctx: CaseContext) -> Case:
    from PIL import Image

    root = ctx.inputs / "images"
    naming = ctx.pick(sorted(CLASS_NAMES))
    oddity = ctx.pick(["none", "none", "sizes_differ", "corrupt", "empty_file", "fifo", "bomb", "symlink_loop",
                       "palette_transparency", "sixteen_bit", "no_classes", "hidden_folder"])
    height, width, channels = _image_geometry(ctx)
    mode = "L" if channels == 1 else "RGB"
    for label, name in enumerate(CLASS_NAMES[naming]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = ctx.rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"img_{i}.png")
    first = root / CLASS_NAMES[naming][0]
    if oddity == "sizes_differ":
        Image.new(mode, (width + 3, height + 1)).save(first / "odd.png")
    elif oddity == "corrupt":
        (first / "bad.png").write_bytes(ctx.rng.bytes(100))
    elif oddity == "empty_file":
        (first / "empty.jpg").write_bytes(b"")
    elif oddity == "fifo":
        os.mkfifo(first / "pipe.png")
    elif oddity == "bomb":
        (first / "bomb.png").write_bytes(_png(40000, 40000))
    elif oddity == "symlink_loop":
        os.symlink("loop2.png", first / "loop1.png")
        os.symlink("loop1.png", first / "loop2.png")
    elif oddity == "palette_transparency":
        image = Image.new("P", (width, height))
        image.info["transparency"] = b"\0" * 256
        image.save(first / "palette.png", transparency=b"\0" * 256)
    elif oddity == "sixteen_bit":
        Image.fromarray(np.full((height, width), 40000, np.uint16)).save(first / "deep.png")
    elif oddity == "no_classes":
        for folder in list(root.iterdir()):
            for file in folder.iterdir():
                file.rename(root / f"{folder.name}_{file.name}")
            folder.rmdir()
    elif oddity == "hidden_folder":
        (root / ".cache").mkdir()
    extra = ["--image-size", f"{height}x{width}", "--layout", "NHWC" if ctx.seed.name == "keras_nhwc" else "NCHW"]
    if channels == 1:
        extra.append("--grayscale")
    valid = oddity in ("none", "sizes_differ", "palette_transparency", "sixteen_bit", "hidden_folder")
    return _data_case(ctx, root, f"{naming}, {oddity}", extra=extra, expect_ok=valid,
                      commands=("profile", "profile", "prune"))


def _image_geometry(ctx: CaseContext) -> tuple[int, int, int]:
    shape = ctx.seed.input_shape
    if ctx.seed.name == "keras_nhwc":
        return shape[0], shape[1], shape[2]
    return shape[1], shape[2], shape[0]


# --------------------------------------------------------------------------- flags
BAD_FLAGS = {
    "--batch-size": ["0", "-3", "1", "7", str(10**12), "abc"],
    "--threads": ["-1", "0", "2", str(10**6), str(2**40)],
    "--device": ["tpu", "cuda", "auto", "cpu"],
    "--graph-optimization": ["disable", "basic", "extended", "max"],
    "--max-model-size": ["0", "1", "1k", "9" * 400, "lots", "1.5GiB", "-5", "2PiB"],
    "--max-memory": ["1", "1KB", "64MB", "1GiB", "garbage", "9" * 400, "auto", "0"],
    "--layer": ["nope", "", "logits", "input"],
    "--threshold": ["nan", "-0.1", "1.5", "0", "1", "inf"],
    "--fraction": ["0", "1", "0.99", "nan", "-1"],
    "--channels": ["-1", "0", str(10**9), "1"],
    "--target": ["abc", "-1", str(10**30), "data", "3"],
    "--x-key": ["nope", "y", "target"],
    "--y-key": ["nope", "x", "target"],
    "--image-size": ["0x0", "100000x100000", "32x32", "abc", "1x1"],
    "--mean": ["0.1,0.2", "nan", "1,2,3,4,5", "0.5"],
    "--std": ["0", "1,2,3,4,5", "inf", "0.5,0.5,0.5"],
    "--scale": ["nan", "0", "-1", "1e38"],
    "--layout": ["NHWC", "NCHW", "HWC"],
    "--epochs": ["0", "1", "-1"],
    "--lr": ["nan", "0", "-1", "1e9", "inf"],
    "--noise": ["-1", "nan", "100", "0.01"],
    "--patience": ["0", "1"],
    "--seed": ["-1", str(2**70), "7"],
    "--optimizer": ["adam", "lbfgs"],
    "--val-fraction": ["0", "1", "nan", "0.999", "0.5"],
}
FLAG_ONLY = ("--untargeted", "--grayscale", "--baselines", "--mixed-precision")


@mutator("bad_options", weight=6)
def bad_options(ctx: CaseContext) -> Case:
    model = ctx.copy_seed()
    command = ctx.random_command({"layers": 0.1, "profile": 0.35, "prune": 0.35, "finetune": 0.08, "fine-prune": 0.12})
    args = ctx.command_args(command, model)
    changes = []
    for _ in range(int(ctx.rng.integers(1, 3))):
        if ctx.chance(0.15):
            flag = ctx.pick(list(FLAG_ONLY) + ["--trigger-data", "--out", "--val", "--test-data"])
            value = _path_value(ctx, flag)
            args += [flag] if value is None else [flag, value]
        else:
            flag = ctx.pick(sorted(BAD_FLAGS))
            value = ctx.pick(BAD_FLAGS[flag] + (list(ctx.seed.layers) if flag == "--layer" else []))
            args += [flag, value]
        changes.append(" ".join(args[-2:]) if value is not None else flag)
    return Case("", args, "; ".join(changes))


def _path_value(ctx: CaseContext, flag: str) -> str | None:
    if flag in FLAG_ONLY:
        return None
    if flag == "--out":
        target = ctx.pick(["file", "nested", "odd"])
        if target == "file":
            ctx.out.parent.mkdir(parents=True, exist_ok=True)
            (ctx.folder / "out_is_a_file").write_text("x")
            return str(ctx.folder / "out_is_a_file")
        return str(ctx.out / ("a/b/c" if target == "nested" else "é x\ny"))
    return str(ctx.pick([ctx.inputs / "triggered.npz", ctx.inputs / "clean.npz", ctx.inputs / "absent.npz"]))
