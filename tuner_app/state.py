"""State on disk: where each file lives, atomic writes, reads that name the damaged file.

Layout under `<directory>/<project>/` is KerasTuner's own (oracle.json, tuner0.json,
trial_<id>/trial.json) plus tuner-app's files beside it:

    search.json             the search's configuration and data fingerprint
    trial_<id>/folds.json   per-fold records of that trial, appended as folds finish
    best_model.keras, retrain.json, learning_curves.png, confusion_matrix.png
                            written by retrain-best

`<directory>/.<project>.lock` is held (flock) by the process that runs the search; it
sits beside the project so that --overwrite can delete the project while holding it.

This module imports neither Keras nor KerasTuner, so `tuner-app results` is fast and
can read a project while a search is writing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner_app.errors import StateError, UsageError

SEARCH_FILE = "search.json"
FOLDS_FILE = "folds.json"
TRIAL_FILE = "trial.json"
ORACLE_FILE = "oracle.json"
MODEL_FILE = "best_model.keras"
RETRAIN_FILE = "retrain.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
XLA_CACHE_DIR = "xla_cache"  # JAX on a GPU: compiled training chunks (`tuner_app.compiled_loop.cache_compilations`)

_UMASK = os.umask(0)
os.umask(_UMASK)
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_project_name(project: str) -> str:
    """Return `project` if it is a plain directory name, else raise UsageError."""
    if not _PROJECT_RE.match(project) or ".." in project:
        raise UsageError(
            f"--project {project!r}: use letters, digits, '.', '_' and '-' only "
            "(no path separators or '..'), e.g. --project mnist_run1"
        )
    return project


def project_dir(directory: str | os.PathLike, project: str) -> Path:
    """The project's directory `<directory>/<project>` (not created)."""
    return Path(directory) / validate_project_name(project)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old or the new file, never a part."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_save(path, write)


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Have `write(tmp)` write a file, then make it `path` atomically and durably.

    Temp file in the same directory (same suffix, for writers that go by it, like
    `keras.Model.save`), fsync it, rename it over the target, fsync the directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make state unreadable to others
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


STALE_TEMPORARY_S = 60  # a temporary file of `atomic_save` older than this was left by a killed process


def is_temporary(path: Path) -> bool:
    """Whether `path` is a temporary file of `atomic_save` (`.<name>.<random>.tmp<suffix>`)."""
    return path.name.startswith(".") and ".tmp" in path.name


def remove_stale_temporaries(pdir: Path) -> list[Path]:
    """Delete the temporary files that processes killed in the middle of an atomic write left in the
    project (older than `STALE_TEMPORARY_S`: a live writer's exists for milliseconds); the removed."""
    removed = []
    for path in pdir.rglob(".*.tmp*"):  # (what `is_temporary` says)
        try:
            if path.is_file() and time.time() - path.stat().st_mtime > STALE_TEMPORARY_S:
                path.unlink()
                removed.append(path)
        except OSError:  # (gone meanwhile)
            continue
    return removed


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`atomic_write_bytes` of `obj` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, what: str = "state file") -> Any:
    """Read JSON, turning a truncated or hand-edited file into a StateError that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError(f"{what} {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(
            f"{what} {path} is damaged ({e.__class__.__name__}: {e}); restore it, "
            "or start again with --overwrite or a new --project"
        ) from None


def trial_dirs(pdir: Path) -> list[Path]:
    """The project's trial directories, in trial-id order."""
    return sorted(p for p in pdir.glob("trial_*") if p.is_dir())


def read_folds(trial_dir: Path) -> list[dict]:
    """The fold records of one trial ([] when none has finished yet)."""
    path = trial_dir / FOLDS_FILE
    if not path.exists():
        return []
    records = read_json(path, "fold records")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "fold" in r for r in records):
        raise StateError(f"fold records {path} are damaged; restore the file, or delete it to re-run that trial's folds")
    return records


def read_search(pdir: Path) -> dict:
    """The search configuration stored with a project; UsageError when there is no search."""
    if not pdir.is_dir():
        raise UsageError(
            f"no search project at {pdir}; run `tuner-app search --directory {pdir.parent} "
            f"--project {pdir.name}` first, or check --directory/--project"
        )
    if not (pdir / SEARCH_FILE).exists():
        if (pdir / ORACLE_FILE).exists() or trial_dirs(pdir):  # a project's files without its settings
            raise StateError(f"{pdir} has no {SEARCH_FILE}: the project is damaged; restore {SEARCH_FILE}")
        raise UsageError(f"{pdir} is not a tuner-app project (it has no {SEARCH_FILE}); check --directory/--project, "
                         "or run `tuner-app search` there first")
    return read_json(pdir / SEARCH_FILE, "search configuration")


def stored_settings(pdir: Path) -> dict:
    """The settings stored with a project, in today's form (older projects are translated)."""
    stored = read_search(pdir)
    if "grid" not in stored and isinstance(stored.get("space"), dict):  # before --model: the seed CNN's grid
        space = stored["space"]
        values = {"filters": [",".join(map(str, f)) for f in space["filters"]],
                  "learning_rate": [float(v) for v in space["learning_rates"]], "dense_units": space["dense_units"]}
        points = [{"filters": f, "learning_rate": lr, "dense_units": d}
                  for f in values["filters"] for lr in values["learning_rate"] for d in values["dense_units"]]
        stored["grid"] = {"hyperparameters": values, "size": len(points), "fingerprint": points_fingerprint(points)}
        stored.setdefault("model", {"spec": "seed", "file": None, "sha256": None})
    if isinstance(stored.get("cv"), dict):
        stored["cv"].setdefault("precision", "float32")  # before --precision
        stored["cv"].setdefault("fold_mode", "sequential")  # before --fold-mode
        stored["cv"]["objective"], stored["cv"]["direction"] = objective(stored)  # before --objective
    return stored


def points_fingerprint(points: list[dict]) -> str:
    """A short hash of a grid's points, in order (stored in search.json; a resume must match it)."""
    return hashlib.sha256(json.dumps(points, sort_keys=True).encode()).hexdigest()[:16]


def objective(search: dict) -> tuple[str, str]:
    """(metric name, "max" or "min") a project's trials are scored by (val_accuracy, max before --objective)."""
    cv = search.get("cv") or {}
    return cv.get("objective", "val_accuracy"), cv.get("direction", "max")


class ProjectLock:
    """An exclusive `flock` on `<directory>/.<project>.lock` for the lifetime of a search.

    The kernel drops the lock when its process dies, so a stale lock file left by a
    killed search never blocks the next run. Only the process that owns the oracle
    (a lone search, or the chief in distributed mode) takes it. Taking it changes no
    byte of an existing lock file; `claim` writes this process's pid once the search
    is sure to run, so that a refused run leaves the directory as it was.
    """

    def __init__(self, directory: str | os.PathLike, project: str):
        self.path = Path(directory) / f".{validate_project_name(project)}.lock"
        self.project = Path(directory) / project
        self._fd: int | None = None

    def acquire(self) -> ProjectLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"project {self.project} is being searched by another process (pid {holder}); "
                "wait for it to finish, or use another --project"
            ) from None
        self._fd = fd
        return self

    def claim(self) -> None:
        """Write this process's pid into the lock file (named by a second search that is refused)."""
        pid = str(os.getpid()).encode()
        if os.pread(self._fd, 64, 0) != pid:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, pid, 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_state(pdir: Path) -> None:
    """Read every KerasTuner state file once, so that damage is named before KerasTuner trips on it."""
    oracle_path = pdir / ORACLE_FILE
    if not oracle_path.exists():
        return  # killed before the first trial started: nothing to resume
    oracle = read_json(oracle_path, "oracle state")
    for trial_id in oracle.get("start_order", []):
        trial_path = pdir / f"trial_{trial_id}" / TRIAL_FILE
        if not trial_path.exists():
            raise StateError(
                f"{trial_path} is missing but {oracle_path} lists trial {trial_id}; restore it, "
                "or start again with --overwrite or a new --project"
            )
        read_json(trial_path, "trial state")
        read_folds(trial_path.parent)
    for tuner_file in pdir.glob("tuner*.json"):
        read_json(tuner_file, "tuner state")


def check_writable(directory: Path) -> None:
    """Raise UsageError unless `directory` exists (or can be created) and files can be written there."""
    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(str(probe))
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(
            f"--directory {directory}: cannot write in {probe} ({e.strerror or e}); choose a writable --directory"
        ) from None
