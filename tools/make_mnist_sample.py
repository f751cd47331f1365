"""Rebuild tuner_app/datasets/mnist_sample from the full MNIST IDX files (its provenance).

    python tools/make_mnist_sample.py /path/to/mnist

Takes a stratified 1,000-image subset of the training set and a stratified 300-image subset
of the test set (scikit-learn train_test_split, random_state=0) and writes them as gzipped
IDX files in MNIST's own layout and names.
"""
import gzip
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tuner_app.data import load_dataset

TRAIN, TEST = 1000, 300


def write_idx(path: Path, a: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + a.astype(np.uint8).tobytes())


def main(src: str) -> None:
    ds = load_dataset(src)
    xtr, _, ytr, _ = train_test_split(ds.x_train, ds.y_train, train_size=TRAIN, stratify=ds.y_train, random_state=0)
    xte, _, yte, _ = train_test_split(ds.x_test, ds.y_test, train_size=TEST, stratify=ds.y_test, random_state=0)
    out = Path(__file__).resolve().parents[1] / "tuner_app" / "datasets" / "mnist_sample"
    out.mkdir(exist_ok=True)
    for name, a in (("train-images-idx3-ubyte.gz", xtr), ("train-labels-idx1-ubyte.gz", ytr),
                    ("t10k-images-idx3-ubyte.gz", xte), ("t10k-labels-idx1-ubyte.gz", yte)):
        write_idx(out / name, a)


if __name__ == "__main__":
    main(sys.argv[1])
