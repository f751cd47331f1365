"""Pictures a person can read: fold accuracies per configuration, learning curves, confusion matrix.

matplotlib with the Agg backend (no display needed); every PNG is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tuner_app.runtime import files
from tuner_app.runtime.progress import describe


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _figure().close(fig)
    files.atomic_write_bytes(path, buf.getvalue())


def plot_results(results: list[dict], path: str | Path) -> Path:
    """Each configuration's fold scores (the search's objective) as points, with mean and +-1 std, best on top.

    Args:
        results: `report.load_results(...)` (ranked).
        path: Where to write the PNG.
    """
    _save(results_figure(results), Path(path))
    return Path(path)


def results_figure(results: list[dict]):
    """The figure of `plot_results` (one scatter point per finished fold)."""
    plt = _figure()
    shown = [r for r in results if r["folds"]][::-1]  # best at the top of the chart
    objective = results[0]["objective"] if results else "score"
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(shown) + 1.5))
    for i, r in enumerate(shown):
        accs = np.array([f[objective] for f in r["folds"] if objective in f])
        ax.scatter(accs, np.full(len(accs), i), s=22, color="tab:blue", alpha=0.7, zorder=3,
                   label="fold" if i == 0 else None)
        ax.errorbar(accs.mean(), i, xerr=accs.std(), fmt="D", color="black", capsize=4, zorder=4,
                    label="mean ± std" if i == 0 else None)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([describe(r["hyperparameters"]) + ("" if r["status"] == "COMPLETED" else " (running)")
                        for r in shown])
    ax.set_xlabel(f"{objective} per fold")
    ax.set_title(f"grid points ranked by mean fold {objective}")
    ax.grid(axis="x", alpha=0.3)
    if shown:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def plot_history(history: dict, path: str | Path) -> Path:
    """Train/validation accuracy and loss per epoch of the retrained model."""
    plt = _figure()
    from matplotlib.ticker import MaxNLocator

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in ((acc, "accuracy"), (loss, "loss")):
        if key not in history:
            continue
        ax.plot(epochs, history[key], "o-", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s--", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("retrain-best learning curves")
    _save(fig, Path(path))
    return Path(path)


def plot_confusion(matrix: np.ndarray, path: str | Path) -> Path:
    """The test-set confusion matrix (rows: true class, columns: predicted), with counts."""
    plt = _figure()
    matrix = np.asarray(matrix)
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(0.5 * k + 3, 0.5 * k + 2.5))
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"test confusion matrix (accuracy {np.trace(matrix) / matrix.sum():.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, Path(path))
    return Path(path)
