"""The defender's data: clean validation/fine-tuning sets and triggered test sets.

Three sources, one interface (`Dataset`): NumPy archives (`.npz` with arrays
`x`, `y` and optionally `target`, or a bare `.npy` of inputs), a folder with one
sub-folder of images per class, and HDF5 files with datasets `x`/`y`. Image folders
and HDF5 files are read lazily, batch by batch, so they may be larger than memory.

User files are untrusted: NumPy files are opened with `allow_pickle=False`, so an
archive holding pickled objects is refused rather than executed.

Labels (`y`) are optional for profiling; `target` holds per-sample attacker target
labels for all-to-all backdoors (e.g. (i+1) mod 10 in the paper's speech attack).
"""
from __future__ import annotations

import abc
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fp_onnx.errors import BadDataError, BadOptionError, UnsafeFileError
from fp_onnx.images import IMAGE_SUFFIXES, ImagePreprocess, load_image
from fp_onnx.signature import TensorSpec


@dataclass
class Batch:
    x: np.ndarray
    y: np.ndarray | None = None
    target: np.ndarray | None = None


@dataclass(frozen=True)
class DataKeys:
    """Names of the arrays (npz) or datasets (HDF5) that hold inputs, labels and targets."""

    x: str = "x"
    y: str = "y"
    target: str = "target"


class Dataset(abc.ABC):
    """Random-access samples with optional labels; read in batches."""

    source: str
    sample_shape: tuple[int, ...]
    dtype: np.dtype

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def take(self, indices: np.ndarray) -> Batch:
        """The samples at `indices` (ascending order is fastest for lazy sources)."""

    @property
    @abc.abstractmethod
    def labels(self) -> np.ndarray | None:
        """All labels (small even when the inputs are not), or None."""

    @property
    def targets(self) -> np.ndarray | None:
        return None

    def batches(self, batch_size: int, indices: np.ndarray | None = None) -> Iterator[Batch]:
        order = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(order), batch_size):
            yield self.take(order[start : start + batch_size])

    def subset(self, indices: np.ndarray) -> "Dataset":
        return SubsetDataset(self, np.asarray(indices, dtype=np.int64))


@dataclass
class ArrayDataset(Dataset):
    """Samples held in memory (NumPy archives; also what tests build)."""

    x: np.ndarray
    y: np.ndarray | None = None
    target: np.ndarray | None = None
    source: str = "<arrays>"
    sample_shape: tuple[int, ...] = field(init=False)
    dtype: np.dtype = field(init=False)

    def __post_init__(self) -> None:
        self.sample_shape = tuple(self.x.shape[1:])
        self.dtype = self.x.dtype
        for name, values in (("y", self.y), ("target", self.target)):
            if values is not None and len(values) != len(self.x):
                raise BadDataError(f"{self.source}: '{name}' has {len(values)} entries but 'x' has {len(self.x)} samples")

    def __len__(self) -> int:
        return len(self.x)

    def take(self, indices: np.ndarray) -> Batch:
        pick = lambda a: None if a is None else a[indices]  # noqa: E731
        return Batch(self.x[indices], pick(self.y), pick(self.target))

    @property
    def labels(self) -> np.ndarray | None:
        return self.y

    @property
    def targets(self) -> np.ndarray | None:
        return self.target


@dataclass
class SubsetDataset(Dataset):
    """A view on some samples of another dataset (train/validation splits)."""

    parent: Dataset
    indices: np.ndarray

    def __post_init__(self) -> None:
        self.source = f"{self.parent.source}[{len(self.indices)} samples]"
        self.sample_shape = self.parent.sample_shape
        self.dtype = self.parent.dtype

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, indices: np.ndarray) -> Batch:
        return self.parent.take(self.indices[indices])

    @property
    def labels(self) -> np.ndarray | None:
        labels = self.parent.labels
        return None if labels is None else labels[self.indices]

    @property
    def targets(self) -> np.ndarray | None:
        targets = self.parent.targets
        return None if targets is None else targets[self.indices]


class HDF5Dataset(Dataset):
    """Datasets `x` (and `y`) in an HDF5 file, read slice by slice."""

    def __init__(self, path: Path, keys: DataKeys) -> None:
        h5py = _import_h5py()
        self.source = str(path)
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise BadDataError(f"{path}: not a readable HDF5 file ({exc})") from None
        if keys.x not in self._file:
            raise BadDataError(f"{path}: no dataset '{keys.x}' (found: {', '.join(self._file.keys())}); use --x-key")
        self._x = self._file[keys.x]
        self.sample_shape = tuple(self._x.shape[1:])
        self.dtype = np.dtype(self._x.dtype)
        self._y = _optional_array(self._file, keys.y, len(self._x), path)
        self._target = _optional_array(self._file, keys.target, len(self._x), path)

    def __len__(self) -> int:
        return self._x.shape[0]

    def take(self, indices: np.ndarray) -> Batch:
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        ascending = indices[order]
        unique, inverse = np.unique(ascending, return_inverse=True)
        x = self._x[unique][inverse]  # h5py wants strictly increasing indices
        restore = np.empty_like(order)
        restore[order] = np.arange(len(order))
        pick = lambda a: None if a is None else a[indices]  # noqa: E731
        return Batch(x[restore], pick(self._y), pick(self._target))

    @property
    def labels(self) -> np.ndarray | None:
        return self._y

    @property
    def targets(self) -> np.ndarray | None:
        return self._target


def _optional_array(container, key: str, count: int, path: Path) -> np.ndarray | None:
    if key not in container:
        return None
    values = np.asarray(container[key][()])
    if values.shape[:1] != (count,):
        raise BadDataError(f"{path}: '{key}' has shape {values.shape} but there are {count} samples")
    if not np.issubdtype(values.dtype, np.integer):
        raise BadDataError(f"{path}: '{key}' must hold integer class ids, not {values.dtype}")
    return values.astype(np.int64)


def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise BadDataError("reading HDF5 needs h5py: pip install 'fp-onnx[hdf5]'") from None
    return h5py


class ImageFolderDataset(Dataset):
    """`root/<class>/<image>` files; classes are the sorted sub-folder names (numeric names sort as numbers)."""

    def __init__(self, root: Path, preprocess: ImagePreprocess) -> None:
        self.source = str(root)
        self.preprocess = preprocess
        classes = sorted((p for p in root.iterdir() if p.is_dir()), key=_class_sort_key)
        if not classes:
            raise BadDataError(f"{root}: no class sub-folders; expected {root}/<class>/<image files>")
        self.class_names = [c.name for c in classes]
        files, labels = [], []
        for label, folder in enumerate(classes):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += images
            labels += [int(folder.name) if folder.name.isdigit() else label] * len(images)
        if not files:
            raise BadDataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        first = self.preprocess(load_image(files[0]))
        self.sample_shape = tuple(first.shape)
        self.dtype = first.dtype

    def __len__(self) -> int:
        return len(self._files)

    def take(self, indices: np.ndarray) -> Batch:
        x = np.stack([self.preprocess(load_image(self._files[i])) for i in indices])
        return Batch(x, self._labels[indices])

    @property
    def labels(self) -> np.ndarray:
        return self._labels


def _class_sort_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def open_dataset(
    path: str | os.PathLike,
    *,
    keys: DataKeys = DataKeys(),
    preprocess: ImagePreprocess | None = None,
) -> Dataset:
    """Open `path` by its kind: folder → images, .h5/.hdf5 → HDF5, .npz/.npy → NumPy."""
    path = Path(path)
    if not path.exists():
        raise BadDataError(f"{path}: no such file or folder")
    if path.is_dir():
        return ImageFolderDataset(path, preprocess or ImagePreprocess())
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return HDF5Dataset(path, keys)
    if suffix in (".npz", ".npy"):
        return _open_numpy(path, keys)
    raise BadDataError(f"{path}: unknown data format; use .npz/.npy, .h5/.hdf5, or a folder of class sub-folders")


def _open_numpy(path: Path, keys: DataKeys) -> ArrayDataset:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return ArrayDataset(_numeric(loaded, path, "x"), source=str(path))
        with loaded as archive:
            if keys.x not in archive.files:
                found = ", ".join(archive.files) or "none"
                raise BadDataError(f"{path}: no array '{keys.x}' (found: {found}); use --x-key")
            arrays = {name: archive[name] for name in (keys.x, keys.y, keys.target) if name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UnsafeFileError(f"{path}: holds pickled Python objects; refusing to unpickle untrusted data") from None
        raise BadDataError(f"{path}: not a readable NumPy file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BadDataError(f"{path}: not a readable NumPy file ({exc})") from None
    return ArrayDataset(
        _numeric(arrays[keys.x], path, keys.x),
        _labels(arrays.get(keys.y), path, keys.y),
        _labels(arrays.get(keys.target), path, keys.target),
        source=str(path),
    )


def _numeric(values: np.ndarray, path: Path, key: str) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_) or values.ndim < 1:
        raise BadDataError(f"{path}: '{key}' must be a numeric array with a sample axis, not {values.dtype}{list(values.shape)}")
    return values


def _labels(values: np.ndarray | None, path: Path, key: str) -> np.ndarray | None:
    if values is None:
        return None
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise BadDataError(f"{path}: '{key}' must be a 1-D array of integer class ids, not {values.dtype}{list(values.shape)}")
    return values.astype(np.int64)


def check_fits(dataset: Dataset, spec: TensorSpec) -> None:
    """Refuse data whose sample shape or dtype cannot feed the model input."""
    expected = spec.shape[1:] if spec.shape else None
    shape_ok = expected is None or (
        len(expected) == len(dataset.sample_shape)
        and all(not isinstance(e, int) or e == s for e, s in zip(expected, dataset.sample_shape))
    )
    if not shape_ok:
        raise BadDataError(
            f"{dataset.source}: samples of shape {list(dataset.sample_shape)} do not fit model input "
            f"{spec.describe()} (per-sample shape {['?' if not isinstance(e, int) else e for e in expected]})"
        )
    wants_float = np.issubdtype(spec.dtype, np.floating)
    if wants_float and not np.issubdtype(dataset.dtype, np.floating):
        raise BadDataError(
            f"{dataset.source}: holds {dataset.dtype} values but model input {spec.describe()} expects floats; "
            "store the preprocessed float inputs the model was trained on"
        )
    if not wants_float and dataset.dtype != spec.dtype:
        raise BadDataError(f"{dataset.source}: holds {dataset.dtype} values but model input {spec.describe()} expects {spec.dtype}")


def split_dataset(dataset: Dataset, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic (fine-tuning, validation) split, stratified by label when labels exist.

    Each class contributes round(val_fraction * count) samples (at least one where it
    has two or more) to validation, so a rare class is not lost from either part.
    """
    if not 0.0 < val_fraction < 1.0:
        raise BadOptionError(f"--val-fraction {val_fraction}: must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    labels = dataset.labels if dataset.labels is not None else np.zeros(len(dataset), dtype=np.int64)
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.append(members[:count])
    val_indices = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    train_indices = np.setdiff1d(np.arange(len(dataset)), val_indices)
    if len(val_indices) == 0 or len(train_indices) == 0:
        raise BadDataError(f"{dataset.source}: {len(dataset)} samples are too few to split for fine-tuning and validation")
    return dataset.subset(train_indices), dataset.subset(val_indices)
