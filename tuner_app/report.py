"""Results from disk: the ranked trials, as a rich table, CSV or JSON.

Reads trial.json and folds.json directly (no Keras import), so it is fast and works
while a search is still writing the project.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from rich.table import Table

from tuner_app import state
from tuner_app.errors import StateError

_STATUS_ORDER = {"COMPLETED": 0, "RUNNING": 1}


def load_results(pdir: Path) -> list[dict]:
    """Every trial of a project, ranked: completed by score (ties: grid order), then the rest.

    Each entry: trial_id, hyperparameters, status, score, std, folds (the fold records).
    """
    state.read_search(pdir)
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
        accs = [f["val_accuracy"] for f in folds]
        mean = sum(accs) / len(accs) if accs else None
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs)) if accs else None
        score = trial.get("score") if status == "COMPLETED" else mean
        results.append({"trial_id": trial["trial_id"], "hyperparameters": values, "status": status,
                        "score": score, "std": std, "folds": folds})
    results.sort(key=lambda r: (_STATUS_ORDER.get(r["status"], 2),
                                -(r["score"] if r["score"] is not None else -1), r["trial_id"]))
    return results


def best_completed(results: list[dict]) -> dict | None:
    """The best completed trial, or None."""
    return next((r for r in results if r["status"] == "COMPLETED"), None)


def table(results: list[dict], folds: int | None = None) -> Table:
    """The ranking as a rich Table: configuration, mean +- std, per-fold accuracies."""
    t = Table(title="trials ranked by mean fold val_accuracy")
    for col, just in (("rank", "right"), ("trial", "left"), ("filters", "left"), ("learning rate", "right"),
                      ("dense", "right"), ("mean ± std", "right"), ("fold accuracies", "left"), ("status", "left")):
        t.add_column(col, justify=just)
    for rank, r in enumerate(results, start=1):
        hp = r["hyperparameters"]
        done = "" if folds is None or len(r["folds"]) == folds else f" ({len(r['folds'])}/{folds} folds)"
        t.add_row(
            str(rank) if r["status"] == "COMPLETED" else "-", r["trial_id"], str(hp.get("filters")),
            f"{hp.get('learning_rate'):g}", str(hp.get("dense_units")),
            f"{r['score']:.4f} ± {r['std']:.4f}" if r["score"] is not None else "-",
            " ".join(f"{f['val_accuracy']:.4f}" for f in r["folds"]), r["status"].lower() + done,
        )
    return t


def to_json(results: list[dict]) -> str:
    """The ranking as a JSON list (one object per trial, fold records included)."""
    return json.dumps(results, indent=1)


def to_csv(results: list[dict]) -> str:
    """One row per trial; fold accuracies joined by ';'."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["rank", "trial_id", "status", "filters", "learning_rate", "dense_units", "score", "std",
                "folds_done", "fold_accuracies"])
    for rank, r in enumerate(results, start=1):
        hp = r["hyperparameters"]
        w.writerow([rank if r["status"] == "COMPLETED" else "", r["trial_id"], r["status"], hp.get("filters"),
                    hp.get("learning_rate"), hp.get("dense_units"), r["score"], r["std"], len(r["folds"]),
                    ";".join(str(f["val_accuracy"]) for f in r["folds"])])
    return out.getvalue()
