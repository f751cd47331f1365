"""Results from disk: the ranked trials, as a rich table, CSV or JSON.

Reads search.json, trial.json and folds.json directly (no Keras import), so it is fast and
works while a search is still writing the project. Everything is by name: the columns are
the model's own hyperparameters, the score is the mean of the search's objective over the
folds (its direction decides the ranking).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from rich.table import Table

from tuner_app.errors import StateError, UsageError
from tuner_app.runtime.files import check_writable
from tuner_app.runtime.progress import format_value, plural
from tuner_app.tuning import state

_STATUS_ORDER = {"COMPLETED": 0, "RUNNING": 1}
# KerasTuner's RUNNING is also the state of a trial whose search was stopped (its rerun resumes it): the table
# says what holds either way; JSON and CSV keep KerasTuner's word
_STATUS_SHOWN = {"RUNNING": "unfinished"}


def load_results(pdir: Path) -> list[dict]:
    """Every trial of a project, ranked: completed by score (ties: trial order), then the rest.

    Each entry: trial_id, hyperparameters, status, objective, score (mean of the folds'
    objective), std, folds (the fold records).
    """
    name, direction = state.objective(state.read_search(pdir))
    results = []
    for tdir in state.trial_dirs(pdir):
        if not (tdir / state.TRIAL_FILE).exists() and not (tdir / state.FOLDS_FILE).exists():
            continue  # created this instant by a running search; its trial.json follows
        trial = state.read_json(tdir / state.TRIAL_FILE, "trial state")
        try:
            values = trial["hyperparameters"]["values"]
            status = trial["status"]
        except (KeyError, TypeError):
            raise StateError(f"trial state {tdir / state.TRIAL_FILE} is damaged (no hyperparameters/status); restore it") from None
        folds = state.read_folds(tdir)
        scores = [f[name] for f in folds if name in f]
        mean = sum(scores) / len(scores) if scores else None
        std = math.sqrt(sum((a - mean) ** 2 for a in scores) / len(scores)) if scores else None
        score = trial.get("score") if status == "COMPLETED" else mean
        results.append({"trial_id": trial["trial_id"], "hyperparameters": values, "status": status,
                        "objective": name, "score": score, "std": std, "folds": folds})
    sign = -1 if direction == "max" else 1
    results.sort(key=lambda r: (_STATUS_ORDER.get(r["status"], 2), r["score"] is None,
                                sign * (r["score"] or 0), r["trial_id"]))
    return results


def best_completed(results: list[dict]) -> dict | None:
    """The best completed trial, or None."""
    return next((r for r in results if r["status"] == "COMPLETED"), None)


def hyperparameter_names(results: list[dict]) -> list[str]:
    """The hyperparameter names of all trials, in the order they first appear."""
    return list(dict.fromkeys(name for r in results for name in r["hyperparameters"]))


def table(results: list[dict], folds: int | None = None) -> Table:
    """The ranking as a rich Table: hyperparameters, mean +- std, each fold's score, status."""
    objective = results[0]["objective"] if results else "score"
    names = hyperparameter_names(results)
    t = Table(title=f"trials ranked by mean fold {objective}")
    for col, just in (("rank", "right"), ("trial", "left"), *((n, "right") for n in names), ("mean ± std", "right"),
                      (f"fold {objective}", "left"), ("status", "left")):
        t.add_column(col, justify=just)
    for rank, r in enumerate(results, start=1):
        hp = r["hyperparameters"]
        done = "" if folds is None or len(r["folds"]) == folds else f" ({len(r['folds'])}/{folds} folds)"
        t.add_row(
            str(rank) if r["status"] == "COMPLETED" else "-", r["trial_id"],
            *(format_value(hp[n]) if n in hp else "-" for n in names),
            f"{r['score']:.4f} ± {r['std']:.4f}" if r["score"] is not None and r["std"] is not None else "-",
            " ".join(f"{f[objective]:.4f}" for f in r["folds"] if objective in f), _STATUS_SHOWN.get(r["status"], r["status"].lower()) + done,
        )
    return t


def grid_table(points: list[dict], names: list[str], params: list[int] | None = None) -> Table:
    """The grid's points in search order (for `search --dry-run`), each under the trial id the search gives it.

    KerasTuner numbers trials from 0, zero-padded to the width of the grid's size, in the order they are
    created; the oracle creates them in grid order, so point i is trial i in `results` too."""
    t = Table(title=f"{plural(len(points), 'grid point')}, in search order")
    for col in ("trial", *names, *(["params"] if params else [])):
        t.add_column(col, justify="right")
    width = len(str(len(points)))
    for i, point in enumerate(points):
        t.add_row(f"{i:0{width}d}", *(format_value(point[n]) if n in point else "-" for n in names),
                  *([f"{params[i]:,}"] if params else []))
    return t


def to_json(results: list[dict]) -> str:
    """The ranking as a JSON list (one object per trial, its rank first, fold records included)."""
    return json.dumps([{"rank": rank, **r} for rank, r in enumerate(results, start=1)], indent=1)


def to_csv(results: list[dict]) -> str:
    """One row per trial: its hyperparameters by name, score, std; fold scores joined by ';'."""
    objective = results[0]["objective"] if results else "score"
    names = hyperparameter_names(results)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["rank", "trial_id", "status", *names, "score", "std", "folds_done", f"fold_{objective}"])
    for rank, r in enumerate(results, start=1):
        hp = r["hyperparameters"]
        w.writerow([rank if r["status"] == "COMPLETED" else "", r["trial_id"], r["status"], *(hp.get(n) for n in names),
                    r["score"], r["std"], len(r["folds"]), ";".join(str(f.get(objective)) for f in r["folds"])])
    return out.getvalue()


def completed_trials(pdir: Path) -> int:
    """How many trials of the project at `pdir` are complete (0 before it exists)."""
    return sum(r["status"] == "COMPLETED" for r in load_results(pdir)) if (pdir / state.SEARCH_FILE).exists() else 0


def ranked_trials(directory: str | Path, project: str) -> tuple[list[dict], int]:
    """A project's trials ranked by their mean fold objective, and the search's number of folds."""
    pdir = state.project_dir(directory, project)
    ranked = load_results(pdir)
    return ranked, state.read_search(pdir)["cv"]["folds"]


def plot_trials(directory: str | Path, project: str, path: Path) -> None:
    """Write a PNG of every configuration's fold scores (`results --plot`)."""
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot {path}: give a .png file name")
    pdir = state.project_dir(directory, project)
    check_writable(path.parent)
    from tuner_app.plots import plot_results

    plot_results(load_results(pdir), path)


def retrain_files(directory: str | Path, project: str) -> list[Path]:
    """What `retrain-best` writes: the model (its whole path), its record, learning curves, confusion matrix."""
    pdir = state.project_dir(directory, project)
    return [pdir / state.MODEL_FILE, pdir / state.RETRAIN_FILE, pdir / state.CURVES_FILE, pdir / state.CONFUSION_FILE]

