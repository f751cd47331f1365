"""Load and validate an image-classification dataset; subset, scale and one-hot it.

Four sources: a Keras dataset by name (downloaded and cached by Keras), `mnist-sample`
(a 1,300-image stratified MNIST subset shipped inside the package, for work with no
network), an `.npz` with `x_train, y_train, x_test, y_test`, or a directory holding the
four IDX files of MNIST's original layout (gzipped or not). Everything is validated here, once, with
messages that name the file and the fix; nothing downstream re-checks the arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner_app.errors import DataError, UsageError

KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
SAMPLE = "mnist-sample"
SAMPLE_DIR = Path(__file__).parent / "datasets" / "mnist_sample"
DATASETS = (*KERAS_DATASETS, SAMPLE)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# IDX file stems: MNIST's names ("t10k") and the obvious "test" spelling.
IDX_STEMS = {
    "x_train": ("train-images",),
    "y_train": ("train-labels",),
    "x_test": ("t10k-images", "test-images"),
    "y_test": ("t10k-labels", "test-labels"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Dataset:
    """Raw arrays as loaded: images (N, H, W) or (N, H, W, C), integer labels 0..K-1.

    Args:
        x_train: Training images.
        y_train: Training labels, integers in [0, num_classes).
        x_test: Test images, same per-image shape as `x_train`.
        y_test: Test labels.
        source: Where the data came from ("mnist", or a path), for the records.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max()) + 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        shape = self.x_train.shape[1:]
        return (*shape, 1) if len(shape) == 2 else tuple(shape)

    def fingerprint(self) -> str:
        """A short hash of the training arrays: a resumed search must see the same data."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train):
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).data)
        return h.hexdigest()[:16]


def load_dataset(data: str | Path | None = None, dataset: str = "mnist") -> Dataset:
    """Load a dataset from a local path, or else by Keras dataset name.

    Args:
        data: An `.npz` file or an IDX directory; when given, `dataset` is ignored.
        dataset: A `keras.datasets` name, downloaded (and cached) by Keras, or "mnist-sample",
            the subset shipped with tuner-app.

    Returns:
        The validated `Dataset`.

    Raises:
        DataError: unreadable, missing or inconsistent data, with the fix in the message.
    """
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise DataError(f"--data {path}: no such file or directory; give an .npz file or a directory of IDX files")
        arrays = _load_idx_dir(path) if path.is_dir() else _load_npz(path)
        return validate(Dataset(*arrays, source=str(path.resolve())))
    if dataset == SAMPLE:
        return validate(Dataset(*_load_idx_dir(SAMPLE_DIR), source=SAMPLE))
    return validate(Dataset(*_download(dataset), source=dataset))


def load_source(source: str) -> Dataset:
    """Load a dataset from what `Dataset.source` recorded: a dataset name or a path."""
    return load_dataset(None, source) if source in DATASETS else load_dataset(source)


def _download(name: str):
    if name not in KERAS_DATASETS:
        raise UsageError(f"--data {name}: neither a dataset name ({', '.join(DATASETS)}) nor a file or folder")
    import keras

    try:
        (xtr, ytr), (xte, yte) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # noqa: BLE001 - any download/cache failure means the same to the user
        reason = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise DataError(
            f"could not download the {name!r} dataset ({reason}); without a network, pass a local copy with "
            f"--data PATH (an .npz or a directory of the MNIST IDX files), or try --data {SAMPLE}"
        ) from None
    return xtr, ytr.reshape(-1), xte, yte.reshape(-1)


def _load_npz(path: Path):
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DataError(f"--data {path}: cannot read it ({e.strerror}); give an .npz or a directory of IDX files") from None
    if magic[:2] != b"PK":  # an .npz is a zip archive; numpy would try anything else as a pickle
        raise DataError(f"--data {path}: not an .npz file (numpy.savez writes one); give an .npz with arrays "
                        f"{', '.join(NPZ_KEYS)}, or a directory of the four MNIST IDX files")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"--data {path}: the .npz lacks {', '.join(missing)}; it needs arrays {', '.join(NPZ_KEYS)}")
            return tuple(f[k] for k in NPZ_KEYS)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = "it holds object arrays, which tuner-app does not unpickle" if "pickle" in str(e) else str(e)
        raise DataError(f"--data {path}: not a readable .npz file ({reason}); give an .npz of numeric arrays "
                        f"{', '.join(NPZ_KEYS)}, or a directory of IDX files") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array.

    Args:
        path: The file; names ending in `.gz` are decompressed.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) != header + int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path}: IDX file is truncated or has extra bytes (header says shape {tuple(dims)})")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _load_idx_dir(path: Path):
    arrays = []
    for stems in IDX_STEMS.values():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith(stems) and "idx" in p.name)
        if not found:
            raise DataError(
                f"--data {path}: no {stems[0]}-idx*-ubyte[.gz] file; the directory needs the four MNIST IDX files "
                "(train-images, train-labels, t10k-images, t10k-labels)"
            )
        arrays.append(read_idx(found[0]))
    return tuple(arrays)


def validate(ds: Dataset) -> Dataset:
    """Check shapes, labels and pixel values; return the dataset with labels as int64."""
    where = f"data {ds.source}"
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x.ndim not in (3, 4):
            raise DataError(f"{where}: x_{split} has shape {x.shape}; images must be (N, H, W) or (N, H, W, C)")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise DataError(f"{where}: y_{split} has shape {y.shape}; labels must be a 1-D array of class indices")
        if len(x) != len(y):
            raise DataError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; they must match")
        if len(x) == 0:
            raise DataError(f"{where}: x_{split} is empty")
        if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
            raise DataError(f"{where}: y_{split} holds non-integer labels ({y.dtype}); labels must be class indices 0..K-1")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{where}: x_{split} has dtype {x.dtype}; images must be numbers")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise DataError(f"{where}: x_{split} contains NaN or infinite pixel values; clean or drop those images")
        setattr(ds, f"y_{split}", y.astype(np.int64))
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise DataError(f"{where}: train images are {ds.x_train.shape[1:]} but test images are {ds.x_test.shape[1:]}; they must match")
    k = int(ds.y_train.max()) + 1
    present = np.unique(ds.y_train)
    if ds.y_train.min() < 0 or len(present) != k:
        raise DataError(
            f"{where}: training labels must be 0..K-1 with every class present; found {present.tolist()[:12]}"
        )
    if ds.y_test.min() < 0 or ds.y_test.max() >= k:
        raise DataError(f"{where}: test labels outside the training classes 0..{k - 1}")
    if k < 2:
        raise DataError(f"{where}: the training set has a single class; classification needs at least 2")
    return ds


def stratified_subset(ds: Dataset, n: int, min_per_class: int = 1) -> Dataset:
    """Keep a stratified subset of `n` training images (test set untouched).

    The subset's random_state is fixed (0), independent of the search seed, so that
    `--train-limit N` always means the same images, as in the seed benchmark reference.

    Args:
        ds: The full dataset.
        n: Number of training images to keep.
        min_per_class: Smallest count per class the caller needs (e.g. the fold count).
    """
    from sklearn.model_selection import train_test_split

    total, k = len(ds.y_train), ds.num_classes
    if n > total:
        raise UsageError(f"--train-limit {n}: larger than the training set ({total} images); use at most {total}")
    if n < k * min_per_class:
        raise UsageError(
            f"--train-limit {n}: too small for {k} classes"
            f"{f' x {min_per_class} folds' if min_per_class > 1 else ' (an image of each at least)'}; "
            f"use at least {k * min_per_class}"
        )
    if n == total:
        return ds
    x, _, y, _ = train_test_split(ds.x_train, ds.y_train, train_size=n, stratify=ds.y_train, random_state=0)
    return Dataset(x, y, ds.x_test, ds.y_test, ds.source)


def check_folds(y: np.ndarray, folds: int) -> None:
    """Every class needs at least `folds` examples for stratified K-fold."""
    counts = np.bincount(y)
    if counts.min() < folds:
        c = int(counts.argmin())
        raise DataError(
            f"class {c} has only {counts.min()} training examples, fewer than --folds {folds}; "
            "lower --folds or add data (or raise --train-limit)"
        )


SCALES = ("auto", "255", "none")


def check_scale(ds: Dataset, scale: str = "auto") -> None:
    """Refuse images that `scale` cannot read as pixels (docs/own-model.md "Your data").

    `auto` takes 8-bit pixels (integers, or floats, from 0 to 255: divided by 255) and pixels
    already in [0, 1] (kept); anything else (standardised values, 16-bit images) is refused in one
    line rather than rescaled silently. `255` divides by 255 whatever the values; `none` keeps
    them as they are.

    Raises:
        UsageError: an unknown `scale`, or values outside [0, 255] under `auto`.
    """
    if scale not in SCALES:
        raise UsageError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    if scale != "auto":
        return
    for name, x in (("x_train", ds.x_train), ("x_test", ds.x_test)):
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 255:
            raise UsageError(f"--scale auto: {name} holds values from {low:g} to {high:g}, neither 8-bit pixels (0..255) "
                             "nor [0, 1]; give --scale none to train on them as they are, or rescale them to 0..255")


def divides_by_255(x: np.ndarray, scale: str = "auto") -> bool:
    """Whether `scale_images` divides these images by 255 (see `check_scale`)."""
    return scale == "255" or (scale == "auto" and (np.issubdtype(x.dtype, np.integer) or float(x.max()) > 1.0))


def describe(ds: Dataset, scale: str = "auto") -> str:
    """The data as a search's header says it, e.g. "mnist-sample: 1,000 training images 28x28x1, 10 classes, pixels / 255"."""
    pixels = "pixels / 255" if divides_by_255(ds.x_train, scale) else "pixels as they are"
    shape = "x".join(map(str, ds.input_shape))
    return f"{Path(ds.source).name}: {len(ds.y_train):,} training images {shape}, {ds.num_classes} classes, {pixels}"


def scale_images(x: np.ndarray, scale: str = "auto") -> np.ndarray:
    """Images as float32 with a channel axis, scaled as `check_scale` describes: under `auto`,
    integers are divided by 255, floats kept when already in [0, 1] and divided by 255 otherwise."""
    divide = divides_by_255(x, scale)
    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if divide:
        x /= 255.0
    return x


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels as float32 one-hot rows."""
    return np.eye(num_classes, dtype=np.float32)[y]
