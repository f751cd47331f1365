"""Bad input: one line on stderr naming the problem, exit code 2, no traceback, state untouched.

The command runs in this process (`run_cli_here`: the same `main()` as `tuner-app`, without a
process start-up per case); tests/test_cli.py runs it end to end in subprocesses.
"""

import numpy as np
import pytest
from conftest import MNIST_SAMPLE, MODELS, SMALL_SEARCH, run_cli_here

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

BROKEN = f"{MODELS / 'broken.py'}"


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (40, 28, 28), dtype=np.uint8), "y_train": np.arange(40) % 4,
              "x_test": rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), "y_test": np.arange(8) % 4}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def _tree(directory):
    return {p.relative_to(directory): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


# (name, extra args (after the small search's), expected fragment of the message). This table is the one
# place that asserts the wording of these messages; the unit tests assert the exception and its type.
DENSE_NET = f"{MODELS / 'dense_net.py'}:build"
CASES = [
    ("missing data path", ["--data", "/nonexistent/mnist"], "--data /nonexistent/mnist: no such file or directory"),
    ("npz without keys", ["--data", "NPZ:y_test=None"], "the .npz lacks y_test; it needs arrays x_train, y_train, x_test, y_test"),
    ("lengths differ", ["--data", "NPZ:y_train=short"], "x_train has 40 images but y_train has 39 labels; they must match"),
    ("non-integer labels", ["--data", "NPZ:y_train=float"], "y_train holds non-integer labels"),
    ("labels out of range", ["--data", "NPZ:y_train=negative"], "training labels must be 0..K-1 with every class present"),
    ("test labels outside the training classes", ["--data", "NPZ:y_test=unseen"],
     "test labels outside the training classes 0..3"),
    ("nan pixels", ["--data", "NPZ:x_train=nan"], "x_train contains NaN or infinite pixel values"),
    ("standardised images under --scale auto", ["--data", "NPZ:x_train=standardised", "--train-limit", "40"],
     ("--scale auto: x_train holds values from -1 to 1.5, neither 8-bit pixels (0..255) nor [0, 1]; give --scale none "
      "to train on them as they are, or rescale them to 0..255")),
    ("wrong rank", ["--data", "NPZ:x_train=flat"], "x_train has shape (40, 784); images must be (N, H, W) or (N, H, W, C)"),
    ("train/test shapes differ", ["--data", "NPZ:x_test=other"],
     "train images are (28, 28) but test images are (32, 32); they must match"),
    ("class smaller than folds", ["--data", "NPZ:y_train=rare", "--train-limit", "40"],
     "class 3 has only 1 training examples, fewer than --folds 2"),
    ("folds < 2", ["--folds", "1"], "--folds 1"),
    ("epochs < 1", ["--epochs", "0"], "--epochs 0"),
    ("batch size < 1", ["--batch-size", "0"], "--batch-size 0"),
    ("patience < 1", ["--patience", "0"], "--patience 0"),
    ("learning rate <= 0", ["--grid", "learning_rate=0"], "--grid learning_rate=0: must be a positive number"),
    ("learning rate not a number", ["--grid", "learning_rate=fast"], "--grid learning_rate=fast: learning_rate takes float"),
    ("filter pair not two positive ints", ["--grid", "filters=16x0"], "--grid filters=16x0: give two positive integers"),
    ("dense units <= 0", ["--grid", "dense_units=0"], "--grid dense_units=0: must be a positive integer"),
    ("the old --learning-rate <= 0", ["--learning-rate", "0"], "--learning-rate 0.0: must be a positive number"),
    ("the old --filters not a pair", ["--filters", "16"], "--filters 16: give two positive integers"),
    ("train limit too small", ["--train-limit", "5"], "--train-limit 5: too small for 10 classes x 2 folds"),
    ("train limit too large", ["--train-limit", "100000"],
     "--train-limit 100000: larger than the training set (1000 images)"),
    ("project with a separator", ["--project", "a/b"],
     "--project 'a/b': use letters, digits, '.', '_' and '-' only (no path separators or '..')"),
    ("project with ..", ["--project", ".."], "--project '..'"),
    ("unknown device", ["--device", "tpu"], "--device"),
    ("a stall timeout without --ray", ["--ray-stall-timeout", "60"], "--ray-stall-timeout belongs to --ray"),
    ("unknown precision", ["--precision", "fp8"], "--precision"),
    ("two precisions (the old --mixed-precision)", ["--mixed-precision", "--precision=float32"], "disagree"),
    ("unknown dataset", ["--data", "imagenet"], "--data imagenet: neither a dataset name (mnist, fashion_mnist"),
    ("--dataset beside --data", ["--dataset", "imagenet"], "--dataset is the old name of --data: give one"),
    ("unknown option", ["--fold", "3"],
     "No such option: --fold (Possible options: --fold-mode, --folds, --model). Try 'tuner-app search --help' for help."),
    ("images smaller than the model takes", ["--data", "NPZ:x_train=tiny", "--train-limit", "40"], "images are 12x12 but model seed needs at least 16x16"),
    ("resume with other settings", ["--epochs", "2"], "was searched with other settings (cv.epochs: 1 -> 2)"),
    ("unknown objective direction", ["--objective", "val_foo"],
     "--objective val_foo: the direction of 'val_foo' is unknown; give it as val_foo:max or val_foo:min"),
    ("objective the model does not compute", ["--objective", "val_auc"],
     "--objective val_auc: model seed computes accuracy, loss, val_accuracy, val_loss"),
    ("grid name not declared", ["--grid", "nope=1"],
     "--grid nope: the model declares no hyperparameter 'nope' (it declares filters, learning_rate, dense_units)"),
    ("grid value of the wrong type", ["--grid", "dense_units=wide"], "--grid dense_units=wide: dense_units takes int values"),
    ("grid value not a bool", ["--model", DENSE_NET, "--grid", "second_layer=maybe"], "second_layer takes bool values"),
    ("grid value given twice", ["--grid", "dense_units=120,120"], "--grid dense_units: a value is given twice"),
    ("grid name given twice", ["--grid", "dense_units=16", "--grid", "dense_units=32"], "--grid dense_units: given twice"),
    ("grid option without values", ["--grid", "dense_units"], "give NAME=V1,V2"),
    ("grid option with an empty value", ["--grid", "dense_units=16,,32"], "give at least one value and no empty ones"),
    ("grid option with a broken JSON list", ["--grid", 'filters=["16,32"'], "not a JSON list"),
    ("a preset's grid value split at its comma", ["--grid", "filters=16,32"],
     "--grid filters=16: give two positive integers"),
    ("a grid value the model refuses", ["--model", DENSE_NET, "--grid", "units=0"],
     "check the values given with --grid units, or fix the model"),
    ("model neither a preset nor FILE:NAME", ["--model", "justaname"], "give a preset"),
    ("missing model file", ["--model", "nowhere.py:build"], "no such file nowhere.py"),
    ("missing model module", ["--model", "no_such_module_here:build"], "cannot import module"),
    ("model name not in the file", ["--model", f"{BROKEN}:nope"], "has no 'nope' (it defines "),
    ("model name neither a build function nor a HyperModel", ["--model", f"{BROKEN}:NotAHyperModel"],
     "is neither a build(hp) function nor a keras_tuner.HyperModel"),
    ("model file that exits while imported", ["--model", f"{MODELS / 'exits.py'}:build"],
     "raised SystemExit: 0 (line 5 of"),
    ("model build raises", ["--model", f"{BROKEN}:raises"],
     "building it with its defaults raised ValueError: this model has a bug (line"),
    ("model build returns no model", ["--model", f"{BROKEN}:not_a_model"], "returned str, not a Keras model"),
    ("model not compiled", ["--model", f"{BROKEN}:not_compiled"], "the model is not compiled; call model.compile("),
    ("model output is not the classes", ["--model", f"{BROKEN}:wrong_classes"],
     "the model's output has shape (None, 5) but the data has 10 classes"),
    ("model input is not the images", ["--data", "NPZ:x_train=small", "--train-limit", "40", "--model", f"{BROKEN}:Shapeless"],
     "its input is (28, 28, 1) but the data's images are (16, 16, 1)"),
    ("hyperparameter without a finite grid", ["--model", f"{BROKEN}:no_finite_grid"],
     ("hyperparameter 'dropout' (Float 0.0..0.5, sampling linear) has no finite grid: give it a step, "
      "e.g. hp.Float('dropout', 0.0, 0.5, step=...), or its values with --grid dropout=V1,V2")),
    ("seed options with another model", ["--model", DENSE_NET, "--filters", "8,16"],
     "belong to --model seed"),
    *(SCALE_OUT := [
        ("no workers", ["--workers", "0"], "--workers 0: must be >= 1 (or leave it out for one process)"),
        ("chief without a port", ["--workers", "1", "--chief", "chief-host"],
         "--chief 'chief-host': give HOST:PORT of the chief, e.g. --chief chief-host:8000"),
        ("chief without workers", ["--chief", "chief-host:8000"], "--chief chief-host:8000: give --workers N too"),
    ]),
]


def _materialise(args, tmp_path):
    out = []
    for a in args:
        if isinstance(a, str) and a.startswith("NPZ:"):
            key, kind = a[4:].split("=")
            n = 40
            if kind in ("tiny", "small"):  # 12x12 or 16x16 images, train and test
                side = 12 if kind == "tiny" else 16
                images = np.zeros((n, side, side), np.uint8)
                out.append(_npz(tmp_path / "bad.npz", x_train=images, x_test=images[:8]))
                continue
            value = {"None": None, "short": np.arange(n - 1) % 4, "float": (np.arange(n) % 4) + 0.5,
                     "negative": np.arange(n) % 4 - 1, "nan": np.full((n, 28, 28), np.nan, np.float32),
                     "standardised": np.resize(np.array([-1.0, 0.0, 1.5], np.float32), (n, 28, 28)),
                     "flat": np.zeros((n, 784), np.uint8), "other": np.zeros((8, 32, 32), np.uint8),
                     "rare": np.r_[np.arange(39) % 3, 3], "unseen": np.arange(8) % 5}[kind]
            a = _npz(tmp_path / "bad.npz", **{key: value})
        out.append(a)
    return out


def _small_search_with(extra):
    """SMALL_SEARCH with EXTRA's options in place of its own (a --grid NAME replaces SMALL_SEARCH's --grid NAME;
    another --model drops the seed's --grid values)."""
    pairs = [SMALL_SEARCH[i:i + 2] for i in range(0, len(SMALL_SEARCH) - 1, 2)]
    flags = [a for a in SMALL_SEARCH[len(pairs) * 2:]]
    given = [extra[i:i + 2] for i in range(0, len(extra), 2)]
    grid_names = {v.partition("=")[0] for o, v in given if o == "--grid"}
    old_seed = any(o in ("--filters", "--learning-rate") for o, _ in given)

    def kept(option, value):
        if option == "--grid":
            name = value.partition("=")[0]
            return "--model" not in extra and not old_seed and name not in grid_names
        return option not in {o for o, _ in given}

    args = [a for option, value in pairs if kept(option, value) for a in (option, value)]
    return args + flags + [a for option, value in given if value is not None for a in (option, value)]


@pytest.mark.parametrize("name, extra, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_search_input(tmp_path, searched, capsys, name, extra, fragment):
    """Without --quiet: the search's header line comes only once every check has passed."""
    before = _tree(searched)
    args = [a for a in _small_search_with(_materialise(extra, tmp_path)) if a != "--quiet"]
    if "--project" not in extra:
        args += ["--project", "small"]  # an existing project must survive bad input untouched
    code, err = run_cli_here(capsys, "search", *args, "--directory", searched)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0] and "Traceback" not in err
    assert _tree(searched) == before


@pytest.mark.parametrize("name, extra, fragment", SCALE_OUT, ids=[c[0] for c in SCALE_OUT])
def test_a_dry_run_refuses_what_the_search_would_refuse_of_workers_and_chief(tmp_path, capsys, name, extra, fragment):
    code, err = run_cli_here(capsys, "search", *SMALL_SEARCH, *extra, "--dry-run", "--directory", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


@pytest.mark.parametrize("extra, fragment", [
    (["--validation-split", "0"], "--validation-split 0.0: must be strictly between 0 and 1"),
    (["--epochs", "0"], "--epochs 0"),
    (["--data", str(MNIST_SAMPLE / "README.md")], f"--data {MNIST_SAMPLE / 'README.md'}: "),  # its wording: below
])
def test_bad_retrain_input(searched, capsys, extra, fragment):
    before = _tree(searched)
    code, err = run_cli_here(capsys, "retrain-best", "--directory", searched, "--project", "small", *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and fragment in err
    assert _tree(searched) == before


@pytest.mark.parametrize("option, value", [("--retrain-epochs", "0"), ("--validation-split", "2")])
def test_run_refuses_a_bad_retrain_option_before_it_searches(tmp_path, capsys, option, value):
    code, err = run_cli_here(capsys, "run", *SMALL_SEARCH, option, value, "--directory", tmp_path / "d")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tuner-app: error: {option} {value}") and not (tmp_path / "d").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"x_train,y_train\n1,2\n", "not an .npz file"),
    (b"PK\x03\x04 half of a zip", "not a readable .npz file (File is not a zip file)"),
])
def test_a_data_file_that_is_not_an_npz(tmp_path, capsys, content, fragment):
    (tmp_path / "data.npz").write_bytes(content)
    code, err = run_cli_here(capsys, "search", *SMALL_SEARCH, "--data", tmp_path / "data.npz", "--directory", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_unwritable_directory(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        target = "/proc/tuning_dirs"  # root can write anywhere on disk, but not into /proc
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "tuning_dirs")
    without_quiet = [a for a in SMALL_SEARCH if a != "--quiet"]  # and so without the search's header line
    code, err = run_cli_here(capsys, "search", *without_quiet, "--directory", target)
    assert code == 2 and "--directory" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["results", "retrain-best"])
def test_a_folder_that_is_not_a_project_is_a_usage_error_and_one_with_trials_but_no_settings_is_damaged(
        tmp_path, capsys, command):
    (tmp_path / "empty").mkdir()
    code, err = run_cli_here(capsys, command, "--directory", tmp_path, "--project", "empty")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not a tuner-app project" in err, err
    (tmp_path / "empty" / "trial_0").mkdir()
    code, err = run_cli_here(capsys, command, "--directory", tmp_path, "--project", "empty")
    assert code == 1 and "the project is damaged; restore search.json" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty", "trial_0"]
