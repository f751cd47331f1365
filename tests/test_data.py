import gzip

import numpy as np
import pytest
from conftest import MNIST_SAMPLE

from tuner_app import data
from tuner_app.errors import DataError, UsageError

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)


def _write_idx_dir(path, ds, gz: bool):
    path.mkdir()
    for stem, a in (("train-images-idx3-ubyte", ds.x_train), ("train-labels-idx1-ubyte", ds.y_train),
                    ("t10k-images-idx3-ubyte", ds.x_test), ("t10k-labels-idx1-ubyte", ds.y_test)):
        raw = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.astype(np.uint8).tobytes()
        if gz:
            with gzip.open(path / f"{stem}.gz", "wb") as f:
                f.write(raw)
        else:
            (path / stem).write_bytes(raw)


def test_idx_gz_directory_loads_real_mnist_subset(small_dataset):
    ds = small_dataset
    assert ds.x_train.shape == (1000, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (300, 28, 28)
    assert ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert 0 < ds.x_train.mean() < 255  # real pixels, not zeros


@pytest.mark.parametrize("gz", [True, False])
def test_idx_raw_and_gz_give_the_same_arrays(tmp_path, small_dataset, gz):
    _write_idx_dir(tmp_path / "idx", small_dataset, gz)
    ds = data.load_dataset(tmp_path / "idx")
    np.testing.assert_array_equal(ds.x_train, small_dataset.x_train)
    np.testing.assert_array_equal(ds.y_test, small_dataset.y_test)


def test_npz_loads(tmp_path, small_dataset):
    ds = small_dataset
    np.savez(tmp_path / "d.npz", x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    loaded = data.load_dataset(tmp_path / "d.npz")
    np.testing.assert_array_equal(loaded.x_train, ds.x_train)
    assert loaded.y_train.dtype == np.int64


def test_stratified_subset_keeps_class_proportions(small_dataset):
    sub = data.stratified_subset(small_dataset, 500)
    assert len(sub.y_train) == 500
    full = np.bincount(small_dataset.y_train) / 1000
    np.testing.assert_allclose(np.bincount(sub.y_train) / 500, full, atol=0.005)
    again = data.stratified_subset(small_dataset, 500)
    np.testing.assert_array_equal(sub.y_train, again.y_train)  # same images every time


@pytest.mark.parametrize("n", [5, 5000])  # the messages' wording: tests/test_cli_errors.py
def test_train_limit_bounds(small_dataset, n):
    with pytest.raises(UsageError):
        data.stratified_subset(small_dataset, n, min_per_class=2)


def test_scaling_and_one_hot():
    x = data.scale_images(np.array([[[0, 255]]], dtype=np.uint8))
    assert x.shape == (1, 1, 2, 1) and x.dtype == np.float32 and x.max() == 1.0
    y = data.one_hot(np.array([2, 0]), 3)
    np.testing.assert_array_equal(y, [[0, 0, 1], [1, 0, 0]])


def _images(x_train, x_test=None):
    y = np.arange(len(x_train)) % 2
    return data.Dataset(x_train, y, x_train if x_test is None else x_test, y, "test")


@pytest.mark.parametrize(("x", "scale", "expected"), [
    (np.array([[[0, 51, 255]]], np.uint8), "auto", [0.0, 0.2, 1.0]),  # 8-bit pixels
    (np.array([[[0.0, 51.0, 255.0]]], np.float64), "auto", [0.0, 0.2, 1.0]),  # 8-bit pixels as floats
    (np.array([[[0.0, 0.5, 1.0]]], np.float32), "auto", [0.0, 0.5, 1.0]),  # already in [0, 1]
    (np.array([[[0.0, 0.5, 1.0]]], np.float32), "255", [0.0, 0.5 / 255, 1 / 255]),
    (np.array([[[-1.5, 0.0, 2.5]]], np.float32), "none", [-1.5, 0.0, 2.5]),  # standardised: as they are
    (np.array([[[0, 51, 255]]], np.uint8), "none", [0.0, 51.0, 255.0]),
])
def test_each_scale_reads_the_images_as_it_says(x, scale, expected):
    data.check_scale(_images(x), scale)  # (refuses nothing here)
    scaled = data.scale_images(x, scale)
    assert scaled.dtype == np.float32 and scaled.shape == (1, 1, 3, 1)
    np.testing.assert_allclose(scaled[0, 0, :, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("x_train, x_test", [
    (np.array([[[-1.5, 0.0, 2.5]]], np.float32), None),  # standardised (mean 0, std 1)
    (np.array([[[0, 1000, 4095]]], np.uint16), None),  # 12-bit pixels in 16-bit integers
    (np.array([[[0, 51, 255]]], np.uint8), np.array([[[0.0, 300.0, 0.0]]], np.float32)),  # the test set alone
])
def test_auto_refuses_what_is_neither_8_bit_pixels_nor_in_0_1_and_255_and_none_take_it(x_train, x_test):
    images = _images(x_train, x_test)
    with pytest.raises(UsageError):
        data.check_scale(images, "auto")
    data.check_scale(images, "255")
    data.check_scale(images, "none")
    with pytest.raises(UsageError):
        data.check_scale(images, "65535")


def _npz(tmp_path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), "y_train": np.arange(20) % 2,
              "x_test": rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), "y_test": np.arange(6) % 2}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


INVALID_NPZ = {  # each message's wording is asserted once, in tests/test_cli_errors.py
    "lacks y_test": {"y_test": None},
    "lengths differ": {"y_train": np.arange(19) % 2},
    "non-integer labels": {"y_train": (np.arange(20) % 2) + 0.5},
    "labels out of range": {"y_train": np.arange(20) % 2 - 1},
    "test labels outside the training classes": {"y_test": np.arange(6) % 3},
    "nan pixels": {"x_train": np.full((20, 8, 8), np.nan, dtype=np.float32)},
    "wrong rank": {"x_train": np.zeros((20, 64), dtype=np.uint8)},
    "train/test shapes differ": {"x_test": np.zeros((6, 9, 9), dtype=np.uint8)},
}


@pytest.mark.parametrize("overrides", INVALID_NPZ.values(), ids=INVALID_NPZ.keys())
def test_invalid_npz_is_rejected_with_a_one_line_message(tmp_path, overrides):
    with pytest.raises(DataError) as info:
        data.load_dataset(_npz(tmp_path, **overrides))
    assert "\n" not in str(info.value)


def test_missing_path_and_missing_idx_file(tmp_path):
    with pytest.raises(DataError):  # its wording: tests/test_cli_errors.py
        data.load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images"):
        data.load_dataset(tmp_path / "empty")


def test_truncated_idx_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") * 3 + b"\0" * 5)
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(tmp_path / "train-images-idx3-ubyte")


def test_too_few_examples_per_class_for_the_folds():
    with pytest.raises(DataError):  # its wording: tests/test_cli_errors.py
        data.check_folds(np.array([0, 0, 0, 0, 0, 1, 1]), 5)


def test_sample_provenance_and_licence_are_shipped():
    text = (MNIST_SAMPLE / "README.md").read_text()
    assert "Creative Commons" in text and "make_mnist_sample.py" in text and "LeCun" in text


def test_the_sample_ships_inside_the_installed_package():
    """`--data mnist-sample` reads files installed with the package, not the repository's."""
    import tomllib
    from pathlib import Path

    assert data.SAMPLE_DIR.is_dir() and data.SAMPLE_DIR.parent.parent == Path(data.__file__).parent
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "mnist_sample/*" in config["tool"]["setuptools"]["package-data"]["tuner_app"][0]


def test_recorded_sources_load_again(small_dataset):
    assert data.load_source("mnist-sample").fingerprint() == small_dataset.fingerprint()
    assert data.load_source(str(MNIST_SAMPLE)).fingerprint() == small_dataset.fingerprint()


def test_offline_download_error_names_the_local_options(monkeypatch):
    import keras

    def offline():
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError) as info:
        data.load_dataset(dataset="mnist")
    assert "--data PATH" in str(info.value) and "--data mnist-sample" in str(info.value)
