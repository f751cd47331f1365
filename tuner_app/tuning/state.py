"""State on disk: where each file lives, atomic writes, reads that name the damaged file.

Layout under `<directory>/<project>/` is KerasTuner's own (oracle.json, tuner0.json,
trial_<id>/trial.json) plus tuner-app's files beside it:

    search.json             the search's configuration and data fingerprint
    trial_<id>/folds.json   per-fold records of that trial, appended as folds finish
    best_model.keras, retrain.json, learning_curves.png, confusion_matrix.png
                            written by retrain-best

`<directory>/.<project>.lock` is held by the process that runs the search
(`tuner_app.runtime.files.ProjectLock`); it sits beside the project so that --overwrite can
delete the project while holding it. Writes go through `tuner_app.runtime.files` (atomic).

This module imports neither Keras nor KerasTuner, so `tuner-app results` is fast and
can read a project while a search is writing it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tuner_app.config import RECORD_FIELDS
from tuner_app.errors import StateError, UsageError
from tuner_app.runtime import files

SEARCH_FILE = "search.json"
FOLDS_FILE = "folds.json"
TRIAL_FILE = "trial.json"
ORACLE_FILE = "oracle.json"
MODEL_FILE = "best_model.keras"
RETRAIN_FILE = "retrain.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
XLA_CACHE_DIR = "xla_cache"  # JAX on a GPU: compiled training chunks (`tuner_app.training.jax_loop.cache_compilations`)

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
    if isinstance(stored.get("data"), dict):
        stored["data"].setdefault("scale", "auto")  # before --scale
    return stored


def points_fingerprint(points: list[dict]) -> str:
    """A short hash of a grid's points, in order (stored in search.json; a resume must match it)."""
    return hashlib.sha256(json.dumps(points, sort_keys=True).encode()).hexdigest()[:16]


def objective(search: dict) -> tuple[str, str]:
    """(metric name, "max" or "min") a project's trials are scored by (val_accuracy, max before --objective)."""
    cv = search.get("cv") or {}
    return cv.get("objective", "val_accuracy"), cv.get("direction", "max")


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


class FoldStore:
    """The fold records of one trial in `trial_<id>/folds.json`, rewritten atomically as each fold ends.

    Args:
        trial_dir: The trial's directory.
    """

    def __init__(self, trial_dir: str | os.PathLike):
        self.path = Path(trial_dir) / FOLDS_FILE
        self.records = {r["fold"]: r for r in read_folds(Path(trial_dir))}

    def __contains__(self, fold: int) -> bool:
        return fold in self.records

    def add(self, record: dict) -> None:
        self.records[record["fold"]] = record
        files.atomic_write_json(self.path, [self.records[k] for k in sorted(self.records)])

    def means(self) -> dict[str, float]:
        """The mean of every metric over the folds (what the trial reports to the oracle)."""
        folds = list(self.records.values())
        names = [k for k in folds[0] if k not in RECORD_FIELDS and all(k in f for f in folds)]
        return {k: float(np.mean([f[k] for f in folds])) for k in names}


def differences(stored: dict, new: dict, prefix: str = "") -> list[str]:
    """The settings that differ, e.g. ['cv.folds: 5 -> 3'] (paths to the same data or file are not compared)."""
    diffs = []
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{key}.")
        elif a != b and key == "sha256" and (new.get("file") or stored.get("file")):  # an edited model file
            diffs.append(f"the model file {Path(new.get('file') or stored.get('file')).name} changed since the search")
        elif a != b and key not in ("source", "file"):
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return diffs


def refuse_changed(pdir: Path, settings: dict, overwrite: bool) -> None:
    """Raise UsageError when `pdir` holds a search with other settings, or is not a project; read-only."""
    if overwrite or not pdir.exists():
        return
    if not (pdir / SEARCH_FILE).exists():
        # (a temporary file left by a search killed during its very first write is no project: it is ignored)
        if any(not files.is_temporary(p) for p in pdir.iterdir()):
            raise UsageError(f"{pdir} exists and is not a tuner-app project; pass --overwrite or a new --project")
        return
    stored = stored_settings(pdir)
    # The device is recorded (later processes adopt it) but not compared: a search may go on
    # elsewhere, on another device, with the same backend and precision.
    compared = [k for k in settings if k != "device"]
    diffs = differences({k: stored.get(k) for k in compared}, {k: settings[k] for k in compared})
    if diffs:
        raise UsageError(f"project {pdir} was searched with other settings ({'; '.join(diffs)}); "
                         "rerun with the stored settings to resume, or pass --overwrite or a new --project")
    check_state(pdir)


def create(pdir: Path, settings: dict, overwrite: bool) -> None:
    """Start over on --overwrite; write search.json for a new project."""
    if overwrite and pdir.exists():
        shutil.rmtree(pdir)
    if not (pdir / SEARCH_FILE).exists():
        created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        files.atomic_write_json(pdir / SEARCH_FILE, {**settings, "created": created})
