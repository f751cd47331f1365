"""Seconds of one validation pass per batch size: what `tuner_app.training.data_order.validation_batch_size` rests on.

    python benchmarks/eval_batch.py --backend tensorflow

Times `model.evaluate` over N images of MNIST (a fold's validation pass, forward only) at batch sizes
32 to 1024, for the seed preset's smallest and largest models, one model (a sequential fold, the
retrain) and K fused members (`tuner_app.training.fused`), in float32 and in mixed bfloat16, best of --rounds
passes per size (the sizes alternate within a round, so a busy neighbour slows them alike), and
writes benchmarks/results/eval-batch-<backend>-<date>.json. Run one backend per process on a quiet
machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (32, 128, 256, 512, 1024)
FILTERS = ("16,32", "64,128")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    ap.add_argument("--images", type=int, default=2400, help="validation images per model")
    ap.add_argument("--members", type=int, default=5, help="fused members (the folds)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from tuner_app.settle import settle

    info = settle(args.backend, "cpu", "float32")
    import keras
    from bench import write_probe

    from tuner_app import models
    from tuner_app.data import load_dataset, one_hot, scale_images
    from tuner_app.training import fused

    loaded = models.load_model("seed")
    ds = load_dataset(args.data)
    x, y = scale_images(ds.x_train[: args.images]), one_hot(ds.y_train[: args.images], 10)
    rows = []
    for precision in ("float32", "mixed_bfloat16"):
        for filters in FILTERS:
            point = models.hyperparameters({"filters": filters, "learning_rate": 0.001, "dense_units": 120})
            for members in (1, args.members):
                keras.backend.clear_session()
                if members == 1:
                    keras.utils.set_random_seed(0)
                    model, data = models.build(loaded.hypermodel, point, precision), (x, y)
                else:
                    model = fused.FusedModels(loaded.hypermodel, precision, reuse=False).fresh(
                        point, list(range(1, members + 1)), 0, x.shape[1:])
                    data = ({f"{fused.member_name(k)}_input": x for k in range(1, members + 1)},
                            {fused.member_name(k): y for k in range(1, members + 1)})
                seconds: dict[int, list[float]] = {}
                for size in SIZES:  # warm-up: one trace per batch shape
                    model.evaluate(*data, batch_size=size, verbose=0)
                for _ in range(args.rounds):
                    for size in SIZES:
                        start = time.perf_counter()
                        model.evaluate(*data, batch_size=size, verbose=0)
                        seconds.setdefault(size, []).append(round(time.perf_counter() - start, 3))
                row = {"filters": filters, "members": members, "precision": precision,
                       "best_s": {str(s): min(t) for s, t in seconds.items()},
                       "rounds_s": {str(s): t for s, t in seconds.items()}}
                rows.append(row)
                print(f"{filters} x{members} {precision}: " + ", ".join(f"{s}: {t:.2f} s" for s, t in row["best_s"].items()),
                      flush=True)
    write_probe(f"model.evaluate of {len(x)} MNIST images per model at each batch size (best of {args.rounds})",
                "eval_batch.py", info.backend, rows, args.json, f"eval-batch-{info.backend}")


if __name__ == "__main__":
    main()
