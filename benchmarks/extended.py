"""The `extended` preset's accuracy: choose a grid point by CV alone, retrain it, test it once.

    python benchmarks/extended.py --data /path/to/mnist                     # the preset's own settings (GPU: minutes)
    python benchmarks/extended.py --data /path/to/mnist --train-limit 6000 --folds 3 --epochs 8   # a CPU-sized search
    python benchmarks/extended.py --data /path/to/mnist --grid 'filters=["64,128"]' --grid dropout=0.25 --train-limit 600 --folds 2 --epochs 1
        # only the final training of a point an earlier record chose (a 1-point grid, a token search)

Runs `tuner-app search --model extended` (on a stratified subset when --train-limit is given,
with the preset's 4-point grid), then `tuner-app retrain-best` on the whole training set (60,000
images; the preset's 30 epochs unless --retrain-epochs), and writes what they reported, the
ranking with every fold, the chosen point and the test accuracy, to
benchmarks/results/extended-<backend>-<date>.json. The test set is used once, by retrain-best,
after the choice.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import child_env, machine

from tuner_app.results import load_results


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - start, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--train-limit", type=int, help="search on a stratified subset of N images (default: all)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, help="epochs per fold (default: the preset's, 15)")
    ap.add_argument("--retrain-epochs", type=int, help="epochs of the final model (default: the preset's, 30)")
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES",
                    help="passed to search (repeatable): restrict the grid, e.g. to a point an earlier record chose")
    ap.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    base = [sys.executable, "-m", "tuner_app"]
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--directory", tmp, "--project", "extended", "--backend", args.backend, "--device", args.device,
                  "--quiet"]
        search_cmd = ["search", "--model", "extended", "--data", str(args.data), "--folds", str(args.folds), *common]
        search_cmd += ["--train-limit", str(args.train_limit)] if args.train_limit else []
        search_cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        search_cmd += [arg for grid in args.grid for arg in ("--grid", grid)]
        search_s = run(base + search_cmd)
        retrain_cmd = ["retrain-best", "--data", str(args.data), *common]
        retrain_cmd += ["--epochs", str(args.retrain_epochs)] if args.retrain_epochs else []
        retrain_s = run(base + retrain_cmd)
        pdir = Path(tmp) / "extended"
        searched = json.loads((pdir / "search.json").read_text())
        retrained = json.loads((pdir / "retrain.json").read_text())
        ranking = [{"hyperparameters": r["hyperparameters"], "score": r["score"], "std": r["std"],
                    "fold_scores": [f[r["objective"]] for f in r["folds"]], "epochs": [f["epochs"] for f in r["folds"]]}
                   for r in load_results(pdir)]
    result = {
        "what": "extended preset: grid point chosen by CV alone, retrained on the whole training set, tested once",
        "command": " ".join(["python", "benchmarks/extended.py", *sys.argv[1:]]),
        "tuner_app_commands": ["tuner-app " + " ".join(search_cmd), "tuner-app " + " ".join(retrain_cmd)],
        "machine": machine(), "date": datetime.date.today().isoformat(),
        "backend": retrained["backend"], "device": retrained["device"],
        "search": {"train_size": searched["data"]["train_size"], "folds": searched["cv"]["folds"],
                   "epochs": searched["cv"]["epochs"], "precision": searched["cv"]["precision"], "wall_s": search_s},
        "ranking": ranking,
        "chosen": retrained["hyperparameters"], "cv_score": retrained["cv_score"],
        "retrain": {"train_size": retrained["train_size"], "epochs": retrained["epochs"],
                    "precision": retrained["precision"], "wall_s": retrain_s,
                    "val_accuracy": retrained["history"].get("val_accuracy")},
        "test_accuracy": retrained["test_accuracy"], "test_loss": retrained["test_loss"],
    }
    path = args.json or ROOT / "benchmarks" / "results" / f"extended-{args.backend}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"chosen {result['chosen']} (CV {result['cv_score']:.4f}); test accuracy {result['test_accuracy']:.4f}; "
          f"search {search_s} s + retrain {retrain_s} s; wrote {path}")


if __name__ == "__main__":
    main()
