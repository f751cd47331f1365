"""Crash safety with real processes: SIGKILL at random moments, SIGTERM/Ctrl-C, the lock, damaged state."""

import json
import os
import random
import signal
import subprocess
import time

import pytest
from conftest import GRID_SEARCH, MNIST_SAMPLE, fold_records, run_cli, start_cli, wait_for

from tuner_app.runtime import files

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

# Two points x 2 folds x 2 epochs: long enough to stop in the middle, short to finish.
SHORT_SEARCH = ["--data", "mnist-sample", "--train-limit", "300", "--folds", "2", "--epochs", "2",
                "--grid", "filters=16x32", "--grid", "learning_rate=0.01,0.001", "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    start = time.monotonic()
    run_cli("search", *GRID_SEARCH, "--directory", directory, "--project", "p", check=True)
    seconds = time.monotonic() - start
    results = json.loads(run_cli("results", "--directory", directory, "--project", "p", "-f", "json",
                                 check=True).stdout)
    return results, seconds / sum(len(t["folds"]) for t in results)  # and the seconds per fold, start-up included


def test_sigkill_five_times_at_random_moments_then_resume(tmp_path, uninterrupted):
    uninterrupted, fold_seconds = uninterrupted
    rng = random.Random(int(os.environ.get("KILL_SEED", "1234")))
    pdir = tmp_path / "p"
    kept = {}
    for kill in range(5):
        proc = start_cli("search", *GRID_SEARCH, "--directory", tmp_path, "--project", "p")
        # Let it make progress first (past start-up), then kill at a random moment.
        done = len(fold_records(pdir)) if pdir.exists() else 0
        wait_for(lambda done=done: pdir.exists() and len(fold_records(pdir)) > done, proc=proc)
        # At most 1.5 folds' time (2.5 s at most), so that five kills leave folds to do on a fast CPU too.
        time.sleep(rng.uniform(0.0, min(2.5, 1.5 * fold_seconds)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"kill {kill}: the search ended before it was killed"
        # Every state file is whole after a kill (atomic writes), and earlier folds are untouched;
        # a kill in the middle of a write leaves only the write's temporary file (removed below).
        for path in pdir.rglob("*.json"):
            if not files.is_temporary(path):
                json.loads(path.read_text())
        now = fold_records(pdir)
        assert all(now[key] == record for key, record in kept.items())
        kept = now

    # The next search removes the temporary files that are older than a live write's: those the
    # kills left and one more (all made old here), not a new one.
    (next(pdir.glob("trial_*")) / ".folds.json.left.tmp.json").write_text("")
    left = [p for p in pdir.rglob(".*") if files.is_temporary(p)]
    for path in left:
        os.utime(path, (time.time() - 2 * files.STALE_TEMPORARY_S,) * 2)
    new = pdir / ".oracle.json.live.tmp.json"
    new.write_text("")
    run_cli("search", *GRID_SEARCH, "--directory", tmp_path, "--project", "p", check=True)
    assert [p for p in pdir.rglob(".*") if files.is_temporary(p)] == [new]
    final = json.loads(run_cli("results", "--directory", tmp_path, "--project", "p", "-f", "json", check=True).stdout)
    assert len(final) == 6 and all(t["status"] == "COMPLETED" and len(t["folds"]) == 5 for t in final)
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in final}) == 6  # each point once
    assert len(list(pdir.glob("trial_*"))) == 6
    records = fold_records(pdir)
    assert all(records[key]["finished_at"] == r["finished_at"] for key, r in kept.items())  # not retrained
    # Same ranking and fold scores as one uninterrupted run: each fold is seeded by (seed, fold).
    by_point = {json.dumps(t["hyperparameters"], sort_keys=True): t for t in uninterrupted}
    for t in final:
        ref = by_point[json.dumps(t["hyperparameters"], sort_keys=True)]
        assert [f["val_accuracy"] for f in t["folds"]] == pytest.approx([f["val_accuracy"] for f in ref["folds"]], abs=1e-6)
    assert [t["hyperparameters"] for t in final] == [t["hyperparameters"] for t in uninterrupted]


@pytest.mark.parametrize("sig, overwrite", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_sigterm_and_ctrl_c_stop_cleanly_and_resume_by_the_advice_as_written(tmp_path, sig, overwrite):
    """The interrupt line's advice, followed literally, resumes; a search started with --overwrite names
    the command without it (rerun as it was, it would delete the finished folds)."""
    import shlex
    import sys

    pdir = tmp_path / "p"
    proc = start_cli("search", *SHORT_SEARCH, "--directory", tmp_path, "--project", "p", *["--overwrite"] * overwrite)
    wait_for(lambda: pdir.exists() and len(fold_records(pdir)) >= 1, proc=proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({signal.Signals(sig).name})" in err and "Traceback" not in err
    before = fold_records(pdir)
    assert before
    shown = run_cli("results", "--directory", tmp_path, "--project", "p", check=True).stdout
    if len(before) == 1:  # the stopped trial: unfinished, not "running" (nothing runs now)
        assert "unfinished (1/2 folds)" in shown and "running" not in shown, shown
    if overwrite:
        command = shlex.split(err.split("rerun without --overwrite to resume: ", 1)[1].strip())
        assert command[0] == "tuner-app" and "--overwrite" not in command
        subprocess.run([sys.executable, "-m", "tuner_app", *command[1:]], check=True, capture_output=True)
    else:
        assert "rerun the same command to resume" in err
        run_cli("search", *SHORT_SEARCH, "--directory", tmp_path, "--project", "p", check=True)
    after = fold_records(pdir)
    assert len(after) == 4 and all(after[k] == r for k, r in before.items())


def test_a_second_search_on_the_same_project_is_refused(tmp_path):
    pdir = tmp_path / "p"
    first = start_cli("search", *GRID_SEARCH, "--directory", tmp_path, "--project", "p")
    try:
        wait_for(lambda: (pdir / "search.json").exists(), proc=first)
        loud = [a for a in GRID_SEARCH if a != "--quiet"]  # its one line, no header before it
        second = run_cli("search", *loud, "--directory", tmp_path, "--project", "p")
        assert second.returncode == 2 and "being searched by another process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()


def test_a_stale_lock_does_not_block(tmp_path):
    (tmp_path / ".p.lock").write_text("999999")  # left by a process that died
    proc = run_cli("search", "--data", MNIST_SAMPLE, "--train-limit", "100", "--folds", "2", "--epochs", "1",
                   "--grid", "filters=8x16", "--grid", "learning_rate=0.01", "--directory", tmp_path, "--project", "p", "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finished")
    run_cli("search", "--data", MNIST_SAMPLE, "--train-limit", "100", "--folds", "2", "--epochs", "1", "--grid", "filters=8x16",
            "--grid", "learning_rate=0.01,0.001", "--directory", directory, "--project", "p", "-q",
            check=True)
    return directory


# (damage, fragment of the message, whether `results` - which reads only the trials - fails too)
@pytest.mark.parametrize("damage, fragment, results_fails", [
    (lambda p: (p / "oracle.json").write_text('{"ongoing_trials": {'), "oracle.json is damaged", False),
    (lambda p: (p / "trial_1" / "trial.json").write_text("not json"), "trial.json is damaged", True),
    (lambda p: (p / "trial_0" / "folds.json").write_text('[{"fold": 1, "val_acc'), "folds.json is damaged", True),
    (lambda p: (p / "search.json").write_bytes(b""), "search.json is damaged", True),
    (lambda p: [f.unlink() for f in (p / "trial_1").iterdir()] and (p / "trial_1").rmdir(),
     "trial_1/trial.json is missing", False),
], ids=["oracle", "trial", "folds", "search", "missing-trial-dir"])
def test_damaged_state_is_named_and_nothing_is_deleted(finished, tmp_path, damage, fragment, results_fails):
    import shutil

    directory = tmp_path / "d"
    shutil.copytree(finished, directory)
    damage(directory / "p")
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    for command in (["search", "--data", MNIST_SAMPLE, "--train-limit", "100", "--folds", "2", "--epochs", "1",
                     "--grid", "filters=8x16", "--grid", "learning_rate=0.01,0.001", "-q"],
                    ["results"]):
        proc = run_cli(*command, "--directory", directory, "--project", "p")
        if command == ["results"] and not results_fails:
            assert proc.returncode == 0, proc.stderr  # the trials themselves are intact
            continue
        assert proc.returncode == 1, (command, proc.stderr)
        assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    after = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert after == before  # the lock file included




def test_a_project_made_with_the_old_option_names_resumes_with_the_new_ones(tmp_path):
    """`--dataset`, `--filters`, `--learning-rate` and `--mixed-precision` (hidden now) made projects that
    `--data`, `--grid` and `--precision mixed` resume: same settings, no fold trained again."""
    old = ["--dataset", "mnist-sample", "--train-limit", "100", "--folds", "2", "--epochs", "1", "--filters", "8,16",
           "--learning-rate", "0.01", "--learning-rate", "0.001", "--mixed-precision"]
    new = ["--data", "mnist-sample", "--train-limit", "100", "--folds", "2", "--epochs", "1", "--grid", "filters=8x16",
           "--grid", "learning_rate=0.01,0.001", "--precision", "mixed"]
    run_cli("search", *old, "-d", tmp_path, "-p", "p", "-q", check=True)
    folds = fold_records(tmp_path / "p")
    assert len(folds) == 4
    again = run_cli("search", *new, "-d", tmp_path, "-p", "p", check=True)
    assert fold_records(tmp_path / "p") == folds and "best:" in again.stdout
    changed = run_cli("search", *new[:-1], "float32", "-d", tmp_path, "-p", "p", "-q")  # and a real change is refused
    assert changed.returncode == 2 and "other settings" in changed.stderr


def test_a_temporary_file_left_by_a_kill_during_the_first_write_does_not_block_the_search(tmp_path):
    """A search killed while it wrote its very first file (search.json) leaves only atomic_save's temporary
    file: the rerun is a search, not a refusal to touch what is "not a tuner-app project"."""
    pdir = tmp_path / "p"
    pdir.mkdir()
    (pdir / ".search.json.k1ll3d.tmp.json").write_text('{"model": ')
    run_cli("search", *SHORT_SEARCH, "-d", tmp_path, "-p", "p", check=True)
    assert (pdir / "search.json").exists() and len(fold_records(pdir)) == 4


def test_a_full_disk_is_one_line_exit_1_with_nothing_half_written_and_the_rerun_resumes(tmp_path):
    """The search's process may write files of 100 kB at most (RLIMIT_FSIZE, as a full disk or a quota
    refuses a write): its fused checkpoint does not fit. One line naming the file, exit 1, no temporary or
    partial file left; the same command without the limit completes the search."""
    import resource
    import sys

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    args = ["search", *SHORT_SEARCH, "--fold-mode", "fused", "--precision", "float32", "-d", str(tmp_path), "-p", "p"]
    proc = subprocess.run([sys.executable, "-m", "tuner_app", *args], preexec_fn=limited, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no room to write" in proc.stderr and "fused_state.npz (File too large)" in proc.stderr, proc.stderr
    pdir = tmp_path / "p"
    assert not [p for p in pdir.rglob("*") if files.is_temporary(p)] and not list(pdir.rglob("fused_state.npz"))
    run_cli(*args, check=True)
    assert len(fold_records(pdir)) == 4
