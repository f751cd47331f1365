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


# (name, extra args (after the small search's), expected fragment of the message)
CASES = [
    ("missing data path", ["--data", "/nonexistent/mnist"], "no such file"),
    ("npz without keys", ["--data", "NPZ:y_test=None"], "lacks y_test"),
    ("lengths differ", ["--data", "NPZ:y_train=short"], "must match"),
    ("non-integer labels", ["--data", "NPZ:y_train=float"], "non-integer"),
    ("labels out of range", ["--data", "NPZ:y_train=negative"], "0..K-1"),
    ("nan pixels", ["--data", "NPZ:x_train=nan"], "NaN or infinite"),
    ("wrong rank", ["--data", "NPZ:x_train=flat"], "(N, H, W)"),
    ("train/test shapes differ", ["--data", "NPZ:x_test=other"], "must match"),
    ("class smaller than folds", ["--data", "NPZ:y_train=rare", "--train-limit", "40"], "fewer than --folds"),
    ("folds < 2", ["--folds", "1"], "--folds 1"),
    ("epochs < 1", ["--epochs", "0"], "--epochs 0"),
    ("batch size < 1", ["--batch-size", "0"], "--batch-size 0"),
    ("patience < 1", ["--patience", "0"], "--patience 0"),
    ("learning rate <= 0", ["--learning-rate", "0"], "--learning-rate"),
    ("learning rate not a number", ["--learning-rate", "fast"], "--learning-rate"),
    ("filter pair not two ints", ["--filters", "16"], "--filters"),
    ("filter pair negative", ["--filters", "-4,8"], "--filters"),
    ("train limit too small", ["--train-limit", "5"], "--train-limit 5"),
    ("train limit too large", ["--train-limit", "100000"], "--train-limit 100000"),
    ("project with a separator", ["--project", "a/b"], "--project"),
    ("project with ..", ["--project", ".."], "--project"),
    ("unknown device", ["--device", "tpu"], "--device"),
    ("unknown precision", ["--precision", "fp8"], "--precision"),
    ("two precisions", ["--mixed-precision", "--precision=float32"], "disagree"),  # (a flag, then an option)
    ("unknown dataset", ["--dataset", "imagenet"], "--dataset"),
    ("images smaller than the model takes", ["--data", "NPZ:x_train=tiny", "--train-limit", "40"], "images are 12x12 but model seed needs at least 16x16"),
    ("resume with other settings", ["--epochs", "2"], "was searched with other settings (cv.epochs: 1 -> 2)"),
    ("unknown objective direction", ["--objective", "val_foo"], "--objective val_foo: the direction"),
    ("objective the model does not compute", ["--objective", "val_auc"], "--objective val_auc: model seed computes"),
    ("grid name not declared", ["--grid", "nope=1"], "declares no hyperparameter 'nope'"),
    ("grid value of the wrong type", ["--grid", "dense_units=wide"], "dense_units takes int values"),
    ("grid option without values", ["--grid", "dense_units"], "give NAME=V1,V2"),
    ("a preset's grid value split at its comma", ["--grid", "filters=16,32"],
     "--grid filters=16: give two positive integers"),
    ("a grid value the model refuses", ["--model", f"{MODELS / 'dense_net.py'}:build", "--grid", "units=0"],
     "check the values given with --grid units, or fix the model"),
    ("missing model file", ["--model", "nowhere.py:build"], "no such file nowhere.py"),
    ("model name not in the file", ["--model", f"{BROKEN}:nope"], "has no 'nope'"),
    ("model file that exits while imported", ["--model", f"{MODELS / 'exits.py'}:build"],
     "raised SystemExit: 0 (line 5 of"),
    ("model build raises", ["--model", f"{BROKEN}:raises"], "raised ValueError: this model has a bug"),
    ("model not compiled", ["--model", f"{BROKEN}:not_compiled"], "the model is not compiled"),
    ("model output is not the classes", ["--model", f"{BROKEN}:wrong_classes"], "but the data has 10 classes"),
    ("hyperparameter without a finite grid", ["--model", f"{BROKEN}:no_finite_grid"], "'dropout' (Float 0.0..0.5"),
    ("seed options with another model", ["--model", f"{MODELS / 'dense_net.py'}:build", "--filters", "8,16"],
     "belong to --model seed"),
]


def _materialise(args, tmp_path):
    out = []
    for a in args:
        if isinstance(a, str) and a.startswith("NPZ:"):
            key, kind = a[4:].split("=")
            n = 40
            if kind == "tiny":  # 12x12 images, train and test
                tiny = np.zeros((n, 12, 12), np.uint8)
                out.append(_npz(tmp_path / "bad.npz", x_train=tiny, x_test=tiny[:8]))
                continue
            value = {"None": None, "short": np.arange(n - 1) % 4, "float": (np.arange(n) % 4) + 0.5,
                     "negative": np.arange(n) % 4 - 1, "nan": np.full((n, 28, 28), np.nan, np.float32),
                     "flat": np.zeros((n, 784), np.uint8), "other": np.zeros((8, 32, 32), np.uint8),
                     "rare": np.r_[np.arange(39) % 3, 3]}[kind]
            a = _npz(tmp_path / "bad.npz", **{key: value})
        out.append(a)
    return out


def _small_search_with(extra):
    args = list(SMALL_SEARCH)
    if "--model" in extra:  # the seed's grid options belong to the seed model
        args = [a for i, a in enumerate(args) if a not in ("--filters", "--learning-rate")
                and (i == 0 or args[i - 1] not in ("--filters", "--learning-rate"))]
    for i in range(0, len(extra), 2):
        opt, value = extra[i], extra[i + 1]
        if opt in args and opt not in ("--filters", "--learning-rate"):
            j = args.index(opt)
            del args[j:j + 2]
        elif opt in ("--filters", "--learning-rate") and "--model" not in extra:
            while opt in args:
                j = args.index(opt)
                del args[j:j + 2]
        if value is not None:
            args += [opt, value]
    return args


@pytest.mark.parametrize("name, extra, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_search_input(tmp_path, searched, capsys, name, extra, fragment):
    before = _tree(searched)
    args = _small_search_with(_materialise(extra, tmp_path))
    if "--project" not in extra:
        args += ["--project", "small"]  # an existing project must survive bad input untouched
    code, err = run_cli_here(capsys, "search", *args, "--directory", searched)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0] and "Traceback" not in err
    assert _tree(searched) == before


@pytest.mark.parametrize("extra, fragment", [
    (["--validation-split", "1.5"], "--validation-split"),
    (["--validation-split", "0"], "--validation-split"),
    (["--epochs", "0"], "--epochs 0"),
    (["--data", str(MNIST_SAMPLE / "README.md")], "not an .npz file"),
])
def test_bad_retrain_input(searched, capsys, extra, fragment):
    before = _tree(searched)
    code, err = run_cli_here(capsys, "retrain-best", "--directory", searched, "--project", "small", *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and fragment in err
    assert _tree(searched) == before


@pytest.mark.parametrize("extra, fragment", [
    (["--epochs", "2"], "was searched with other settings"),
    (["--directory", "/proc/tuning_dirs"], "--directory"),
])
def test_a_refused_search_says_its_one_line_without_a_header(searched, capsys, extra, fragment):
    """Without --quiet too: the search's header line comes only once every check has passed."""
    before = _tree(searched)
    args = [a for a in _small_search_with(extra) if a != "--quiet"]
    code, err = run_cli_here(capsys, "search", *args, "--project", "small",
                             *([] if "--directory" in extra else ["--directory", searched]))
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
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
    code, err = run_cli_here(capsys, "search", *SMALL_SEARCH, "--directory", target)
    assert code == 2 and "--directory" in err and len(err.strip().splitlines()) == 1


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
