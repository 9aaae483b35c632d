"""Data sources: NumPy archives, image folders and HDF5 files; safety and shape checks."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from onnx import TensorProto

from fp_onnx.data import ArrayDataset, DataKeys, check_fits, open_dataset
from fp_onnx.errors import BadDataError, UnsafeFileError
from fp_onnx.images import ImagePreprocess
from fp_onnx.signature import TensorSpec

SPEC = TensorSpec("input", TensorProto.FLOAT, ("batch", 3, 8, 8))


def test_npz_with_labels_and_targets(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10), target=(np.arange(10) + 1) % 10)
    data = open_dataset(tmp_path / "d.npz")
    assert len(data) == 10 and data.sample_shape == (3, 8, 8)
    batches = list(data.batches(4))
    assert [len(b.x) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x)
    np.testing.assert_array_equal(data.targets, (np.arange(10) + 1) % 10)
    check_fits(data, SPEC)


def test_npz_custom_keys(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 8, 8), np.float32), labels=np.array([1, 2]))
    data = open_dataset(tmp_path / "d.npz", keys=DataKeys(x="images", y="labels"))
    np.testing.assert_array_equal(data.labels, [1, 2])
    with pytest.raises(BadDataError, match="no array 'x'.*images, labels"):
        open_dataset(tmp_path / "d.npz")


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="refusing to unpickle"):
        open_dataset(tmp_path / "evil.npy")


def test_raw_pickle_with_npz_name_is_refused(tmp_path):
    (tmp_path / "evil.npz").write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    with pytest.raises(UnsafeFileError, match="refusing to unpickle"):
        open_dataset(tmp_path / "evil.npz")


def test_unreadable_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BadDataError):
        open_dataset(tmp_path / "junk.npz")
    with pytest.raises(BadDataError, match="no such file"):
        open_dataset(tmp_path / "absent.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(BadDataError, match="unknown data format"):
        open_dataset(tmp_path / "d.csv")


def test_shape_and_dtype_mismatch_name_both_shapes():
    wrong_layout = ArrayDataset(np.zeros((2, 8, 8, 3), np.float32), source="d.npz")
    with pytest.raises(BadDataError, match=r"\[8, 8, 3\].*input float32\[batchx3x8x8\]"):
        check_fits(wrong_layout, SPEC)
    raw_pixels = ArrayDataset(np.zeros((2, 3, 8, 8), np.uint8), source="d.npz")
    with pytest.raises(BadDataError, match="uint8 values"):
        check_fits(raw_pixels, SPEC)
    check_fits(ArrayDataset(np.zeros((2, 3, 8, 8), np.float16)), SPEC)  # float16 -> float32 is safe


def test_label_length_mismatch():
    with pytest.raises(BadDataError, match="'y' has 3 entries"):
        ArrayDataset(np.zeros((2, 3)), np.zeros(3, np.int64))


def test_image_folder_streams_and_preprocesses(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("0", "1", "2"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "2" / "notes.txt").write_text("not an image")
    data = open_dataset(tmp_path, preprocess=ImagePreprocess(size=(8, 8), mean=(0.5,), std=(0.25,)))
    assert len(data) == 9 and data.sample_shape == (3, 8, 8)
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    batch = data.take(np.array([0, 8]))
    assert batch.x.dtype == np.float32 and batch.x.shape == (2, 3, 8, 8)
    assert batch.x.min() >= (0 - 0.5) / 0.25 and batch.x.max() <= (1 - 0.5) / 0.25
    nhwc = open_dataset(tmp_path, preprocess=ImagePreprocess(size=(8, 8), layout="NHWC"))
    assert nhwc.sample_shape == (8, 8, 3)


def test_image_folder_with_a_broken_image(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadDataError, match="not a readable image"):
        open_dataset(tmp_path)


def test_hdf5_reads_lazily_in_any_order(tmp_path):
    h5py = pytest.importorskip("h5py")
    x = np.arange(20 * 3 * 2 * 2, dtype=np.float32).reshape(20, 3, 2, 2)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"], f["groups"] = x, np.arange(20) % 4, np.arange(20) // 5
    data = open_dataset(tmp_path / "d.h5")
    picked = np.array([7, 2, 2, 19])
    batch = data.take(picked)
    np.testing.assert_array_equal(batch.x, x[picked])
    np.testing.assert_array_equal(batch.y, picked % 4)
    subset = data.subset(np.array([5, 6]))
    np.testing.assert_array_equal(next(subset.batches(8)).x, x[[5, 6]])
    np.testing.assert_array_equal(subset.groups, [1, 1])


def test_groups_keep_near_copies_on_one_side_of_the_validation_split(tmp_path):
    """Frames of one track (group) must not be both fine-tuned on and validated on."""
    from fp_onnx.data import split_dataset
    groups = np.repeat(np.arange(12), 10)  # 12 tracks of 10 frames
    np.savez(tmp_path / "d.npz", x=np.zeros((120, 3, 8, 8), np.float32), y=groups % 4, groups=groups)
    train, val = split_dataset(open_dataset(tmp_path / "d.npz"), 0.2, seed=0)
    assert not set(train.groups) & set(val.groups)
    assert len(val) == 30 and len(train) == 90  # whole groups: the first to reach a fifth (24 samples)
    again_train, again_val = split_dataset(open_dataset(tmp_path / "d.npz"), 0.2, seed=0)
    np.testing.assert_array_equal(val.groups, again_val.groups)  # seeded
    _, plain = split_dataset(ArrayDataset(np.zeros((120, 3, 8, 8), np.float32), groups % 4), 0.2, seed=0)
    assert len(plain) == 24  # without groups: the stratified per-sample split


def test_groups_must_be_integer_ids_and_more_than_one(tmp_path):
    from fp_onnx.data import split_dataset
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 2), np.float32), groups=np.zeros(4, np.float32))
    with pytest.raises(BadDataError, match="'groups' must be a 1-D array of integer group ids"):
        open_dataset(tmp_path / "float.npz")
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 2), np.float32), groups=np.zeros(3, np.int64))
    with pytest.raises(BadDataError, match="'groups' has 3 entries but 'x' has 4"):
        open_dataset(tmp_path / "short.npz")
    np.savez(tmp_path / "one.npz", x=np.zeros((4, 2), np.float32), y=np.arange(4), groups=np.zeros(4, np.int64))
    with pytest.raises(BadDataError, match="every sample is in one group"):
        split_dataset(open_dataset(tmp_path / "one.npz"), 0.2)


def test_a_group_per_sample_splits_like_independent_samples():
    """Hostile or careless ids (every sample its own group, 100k of them) must not make the split quadratic."""
    from fp_onnx.data import split_dataset
    data = ArrayDataset(np.zeros((100_000, 1), np.float32), group=np.arange(100_000)[::-1].copy())
    train, val = split_dataset(data, 0.2, seed=0)
    assert len(val) == 20_000 and len(train) == 80_000
