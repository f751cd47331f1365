"""Seconds per training epoch of a preset's models, per backend and precision: what `auto` choices rest on.

    python benchmarks/epoch.py --backend tensorflow                  # seed preset, float32 and bfloat16
    python benchmarks/epoch.py --backend torch --model extended --images 6000

Times one epoch (after a warm-up epoch on a few batches) of every architecture of the preset's
grid, on the first N training images, in float32 and in mixed bfloat16, in this process, in
--rounds rounds that alternate the two (a busy neighbour then slows both alike), and writes the
median and every round's seconds to benchmarks/results/epoch-<model>-<backend>-<date>.json. Run
one backend per process (Keras picks its backend once) on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    ap.add_argument("--model", default="seed", choices=["seed", "extended"])
    ap.add_argument("--images", type=int, default=12000)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--rounds", type=int, default=3, help="epochs timed per architecture and precision")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from tuner_app.settle import settle

    info = settle(args.backend, "cpu", "float32")
    import keras
    from bench import write_probe

    from tuner_app import models
    from tuner_app.data import load_dataset, one_hot, scale_images
    from tuner_app.tuning.grid import Grid, discover

    loaded = models.load_model(args.model)
    grid = Grid.from_space(discover(loaded.hypermodel))
    ds = load_dataset(args.data)
    x, y = scale_images(ds.x_train[: args.images]), one_hot(ds.y_train[: args.images], 10)
    architectures = []  # (the architecture's hyperparameters, a grid point of it)
    for point in grid.points:
        architecture = {k: v for k, v in point.items() if k != "learning_rate"}
        if architecture not in [a for a, _ in architectures]:
            architectures.append((architecture, point))
    seconds: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for i, (architecture, point) in enumerate(architectures):
            for precision in ("float32", "mixed_bfloat16"):
                keras.backend.clear_session()
                keras.utils.set_random_seed(0)
                model = models.build(loaded.hypermodel, models.hyperparameters(point), precision)
                model.fit(x[:512], y[:512], epochs=1, batch_size=128, verbose=0)  # warm-up: tracing, allocation
                start = time.perf_counter()
                model.fit(x, y, epochs=1, batch_size=128, verbose=0)
                seconds.setdefault((i, precision), []).append(round(time.perf_counter() - start, 2))
                print(f"{architecture} {precision}: {seconds[i, precision][-1]} s per epoch of {len(x)} images", flush=True)
    rows = [{"hyperparameters": architectures[i][0], "precision": precision, "epoch_s": round(statistics.median(times), 3),
             "rounds_s": times} for (i, precision), times in seconds.items()]
    write_probe(f"one training epoch of {len(x)} images, batch 128, per architecture of the {args.model} grid "
                f"(median of {args.rounds} rounds)", "epoch.py", info.backend, rows, args.json,
                f"epoch-{args.model}-{info.backend}")


if __name__ == "__main__":
    main()
