"""tuner-app against the seed notebook's pipeline, same data and workload, in one run.

    python benchmarks/bench.py --workload small [--rounds 1] [--backend tensorflow] [--precision auto]
                               [--retrain-precision float32] [--fold-mode auto] [--device auto] [--seed-backend tensorflow]
                               [--seed-pipeline ../shared/bench/seed_pipeline.py] [--data ../shared/data/mnist]
    python benchmarks/bench.py --dry-run      # the tiny workload on the CPU: checks the script, records nothing

Runs, alternating, (a) the seed's reference pipeline and (b) `tuner-app run` (search, then
retrain-best, in one process; with --workers: `search --workers N` then `retrain-best`) with the
equivalent options, each as its own process, on the same device, and prints a table
of wall seconds (whole processes, start-up included), the ratio tuner-app / seed, peak RSS, the
chosen configuration, test accuracy, backend, device and machine. Writes the same as JSON
(benchmarks/results/<workload>-<backend>-<date>.json unless --json is given). Time it on a quiet
machine: another process training on the same cores doubles the figures.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The seed's pipeline, byte for byte the project's reference (../shared/bench/seed_pipeline.py),
# kept here so that it travels with the repository (a GPU machine gets only the repository).
SEED_PIPELINE = ROOT / "benchmarks" / "seed_pipeline.py"
SEED_PIPELINE_SHA256 = "2fe02b73219921bd71a0e87f2c661d903d22fa7c71a4ddda558cf9a2026093fb"
SAMPLE = ROOT / "tuner_app" / "datasets" / "mnist_sample"  # IDX files: --dry-run's data
sys.path.insert(0, str(ROOT))
from tuner_app.results import load_results
from tuner_app.runtime import hardware

WORKLOADS = {  # train images (None: all 60,000), epochs per fold, retrain epochs
    "tiny": (600, 1, 1),  # --dry-run's (with 2 folds): checks the script end to end in seconds
    "small": (3000, 1, 1),
    "medium": (12000, 2, 2),
    "full": (None, 5, 10),
}
FOLDS = {"tiny": 2}  # the others: 5, the seed's


def run(cmd: list[str], env: dict) -> dict:
    """Run one process; its wall seconds, peak RSS (wait4's rusage of that child) and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
        return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": out.read()}


def child_env() -> dict:
    """The environment of the pipelines' processes: this checkout first on PYTHONPATH, then what the caller had there
    (gpu.sh's WHEELS folder on a machine without a network)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def machine() -> str:
    """The CPU (model, family/model, its bfloat16 units: what `--precision auto` rests on), cores, OS."""
    return f"{hardware.cpu_info().describe()}, {os.cpu_count()} cores, {platform.system()}"


def write_probe(what: str, script: str, backend: str, rows: list[dict], path: Path | None, name: str) -> None:
    """A probe's record (epoch.py, eval_batch.py): what, its command, machine, date, backend and rows, to
    `path` or benchmarks/results/<name>-<date>.json."""
    result = {"what": what, "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]), "machine": machine(),
              "date": datetime.date.today().isoformat(), "backend": backend, "rows": rows}
    path = path or ROOT / "benchmarks" / "results" / f"{name}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def on_this_machine(rows: list[dict]) -> bool:
    """Whether every row ran on this machine: a seed row taken (--seed-from) from another machine's record gives
    no ratio, since a ratio compares two pipelines on one machine."""
    return all(not r.get("from") or r["from"].endswith(f", {machine()})") for r in rows)


def seed_run(args, limit, epochs, final, env) -> dict:
    cmd = [sys.executable, str(args.seed_pipeline), "--data", str(args.data), "--epochs", str(epochs),
           "--final-epochs", str(final), "--folds", str(FOLDS.get(args.workload, 5))] + (["--train-limit", str(limit)] if limit else [])
    r = run(cmd, {**env, "KERAS_BACKEND": args.seed_backend})
    out = json.loads(r.pop("stdout").strip().splitlines()[-1])
    device = "cpu" if args.device == "cpu" else f"{args.device} (Keras' default device)"
    return {"who": "seed", "backend": out["backend"], "device": device, "precision": "float32", "search_s": None,
            "retrain_s": None, "total_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
            "inner_search_s": out["search_s"], "inner_retrain_s": out["retrain_s"],
            "best": f"{tuple(out['best']['filters'])} lr={out['best']['learning_rate']}",
            "cv_score": out["best"]["avg_accuracy"], "test_accuracy": out["test_accuracy"],
            "ranking": [{"hyperparameters": {"filters": ",".join(map(str, r["filters"])), "learning_rate": r["learning_rate"]},
                         "score": r["avg_accuracy"], "fold_scores": r["fold_accuracies"]}
                        for r in sorted(out["results"], key=lambda r: -r["avg_accuracy"])]}


def tuner_run(args, limit, epochs, final, env, directory, ray: bool = False, fold_mode: str | None = None) -> dict:
    base = [sys.executable, "-m", "tuner_app"]
    common = ["--directory", str(directory), "--project", "bench", "--backend", args.backend, "--device", args.device,
              "--quiet"]
    data = ["--data", str(args.data)] + (["--train-limit", str(limit)] if limit else [])
    searching = [*data, "--epochs", str(epochs), "--folds", str(FOLDS.get(args.workload, 5)), "--overwrite", "--precision", args.precision,
                 "--fold-mode", fold_mode or args.fold_mode, *common]
    if args.workers:
        search = run(base + ["search", *searching, "--workers", str(args.workers)], env)
        # The seed retrains on the same subset it searched: so does this (same images, random_state=0).
        retrain = run(base + ["retrain-best", *data, "--epochs", str(final), "--precision", args.retrain_precision,
                              *common], env)
        search_s, retrain_s, total_s = search["wall_s"], retrain["wall_s"], search["wall_s"] + retrain["wall_s"]
        peak = max(search["peak_rss_mb"] or 0, retrain["peak_rss_mb"] or 0)
    else:  # one process: start-up paid once
        job = run(base + ["run", *searching, "--retrain-epochs", str(final), "--retrain-precision", args.retrain_precision,
                          *(["--ray"] if ray else [])], env)
        retrain_s = json.loads((directory / "bench" / "retrain.json").read_text())["seconds"]
        search_s, total_s, peak = round(job["wall_s"] - retrain_s, 2), job["wall_s"], job["peak_rss_mb"]
    pdir = directory / "bench"
    retrained = json.loads((pdir / "retrain.json").read_text())
    searched = json.loads((pdir / "search.json").read_text())
    ranking = [{"hyperparameters": r["hyperparameters"], "score": r["score"], "std": r["std"],
                "fold_scores": [f[r["objective"]] for f in r["folds"]]} for r in load_results(pdir)]
    rss_by_trial = []
    for tdir in sorted(pdir.glob("trial_*")):
        folds = json.loads((tdir / "folds.json").read_text())
        rss_by_trial.append(folds[-1].get("rss_mb"))
    hp = retrained["hyperparameters"]
    who = ("tuner-app" + (f" --workers {args.workers}" if args.workers else "") + (" --ray" if ray else "")
           + (f" --fold-mode {fold_mode}" if fold_mode else ""))
    return {"who": who, "backend": retrained["backend"], "device": retrained["device"],
            "search_s": search_s, "retrain_s": retrain_s, "total_s": round(total_s, 2), "peak_rss_mb": peak,
            "fold_mode": searched["cv"].get("fold_mode", "sequential"),
            "precision": f"{searched['cv']['precision']} / {retrained['precision']}", "best": f"({hp['filters']}) lr={hp['learning_rate']}",
            "cv_score": retrained["cv_score"], "test_accuracy": retrained["test_accuracy"], "rss_mb_after_each_trial": rss_by_trial,
            "retrain_precision": retrained["precision"], "retrain_val_accuracy": retrained["history"].get("val_accuracy"),
            "ranking": ranking}


def ray_run(args, limit, epochs, final, env, directory) -> dict:
    return tuner_run(args, limit, epochs, final, env, directory, ray=True)


def other_fold_mode_run(args, limit, epochs, final, env, directory) -> dict:
    return tuner_run(args, limit, epochs, final, env, directory, fold_mode=args.also_fold_mode)


def table(rows: list[dict], ratio: float | None) -> str:
    cols = ["who", "backend", "device", "fold_mode", "precision", "search_s", "retrain_s", "total_s", "peak_rss_mb", "best", "test_accuracy"]
    header = [{"precision": "precision (search / retrain)"}.get(c, c) for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else (f"{r[c]:.4f}" if c == "test_accuracy" else str(r[c]))
                                       for c in cols) + " |")
    shown = "none: the seed's row is from another machine" if ratio is None else f"{ratio:.2f}"
    lines.append(f"| ratio tuner-app / seed (mean total wall) | | | | | | | {shown} | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="small")
    ap.add_argument("--rounds", type=int, default=1, help="alternating seed/tuner-app pairs")
    ap.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"), help="tuner-app's backend")
    ap.add_argument("--precision", choices=["auto", "float32", "mixed"], default="auto", help="tuner-app's --precision")
    ap.add_argument("--retrain-precision", choices=["auto", "float32", "mixed"], default="float32",
                    help="tuner-app run's --retrain-precision (retrain-best's --precision): the final model's arithmetic")
    ap.add_argument("--fold-mode", choices=["auto", "fused", "sequential"], default="auto", help="tuner-app's --fold-mode")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                    help="both pipelines' device (cpu hides the GPUs from the seed's too)")
    ap.add_argument("--workers", type=int, help="tuner-app search --workers N (chief + N worker processes)")
    ap.add_argument("--ray", action="store_true", help="also `tuner-app run --ray` (a local Ray) in every round, "
                    "beside the lone run: the engine's overhead")
    ap.add_argument("--also-fold-mode", choices=["fused", "sequential"],
                    help="also `tuner-app run --fold-mode MODE` in every round, beside the run with --fold-mode: "
                    "the two fold modes timed in the same session")
    ap.add_argument("--seed-backend", default="tensorflow", help="the seed pipeline's backend (its default)")
    ap.add_argument("--seed-pipeline", type=Path, default=SEED_PIPELINE,
                    help="the seed's pipeline (refused unless it is the reference, by its SHA-256)")
    ap.add_argument("--data", type=Path, help="a directory of the four MNIST IDX files [default: ../shared/data/mnist; "
                    "--dry-run: the sample shipped with tuner-app]")
    ap.add_argument("--seed-from", type=Path, help="take the seed's row from an earlier JSON of this script (same "
                    "workload) instead of running it again: for `full`, whose seed run takes over half an hour")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="the tiny workload on the CPU, nothing recorded: checks the "
                    "script (and a GPU machine's set-up) end to end")
    args = ap.parse_args()
    if args.dry_run:
        args.workload, args.device, args.rounds = "tiny", "cpu", 1
        args.data = args.data or SAMPLE
    args.data = args.data or ROOT.parent / "shared" / "data" / "mnist"
    if not args.data.is_dir():
        sys.exit(f"--data {args.data}: not a directory; give the directory of the four MNIST IDX files")
    if hashlib.sha256(args.seed_pipeline.read_bytes()).hexdigest() != SEED_PIPELINE_SHA256:
        sys.exit(f"--seed-pipeline {args.seed_pipeline}: not the seed's reference pipeline (its SHA-256 differs)")
    limit, epochs, final = WORKLOADS[args.workload]
    env = {**child_env(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")

    rows = []
    if args.seed_from:
        earlier = json.loads(args.seed_from.read_text())
        if earlier["workload"] != args.workload:
            sys.exit(f"--seed-from {args.seed_from}: a {earlier['workload']} run, not {args.workload}")
        rows = [{**r, "who": "seed", "from": f"{args.seed_from.name} ({earlier['date']}, {earlier['machine']})"}
                for r in earlier["rows"] if r["who"] == "seed"]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = [seed_run, tuner_run] if i % 2 == 0 else [tuner_run, seed_run]
            if args.ray:
                order.insert(1, ray_run)
            if args.also_fold_mode:  # alternating with the main run too, so that neither always goes first
                order.insert(order.index(tuner_run) + i % 2, other_fold_mode_run)
            for fn in order:
                if fn is seed_run and args.seed_from:
                    continue
                row = (fn(args, limit, epochs, final, env) if fn is seed_run
                       else fn(args, limit, epochs, final, env, Path(tmp) / f"r{i}"))
                row["round"] = i + 1
                rows.append(row)
                print(f"round {i + 1}: {row['who']} {row['total_s']} s, test accuracy {row['test_accuracy']:.4f}",
                      file=sys.stderr, flush=True)
    def mean_total(who: str, key: str = "total_s") -> float:
        return statistics.mean(r[key] for r in rows if r["who"] == who)

    lone = "tuner-app" + (f" --workers {args.workers}" if args.workers else "")
    same_machine = on_this_machine(rows)
    ratio = mean_total(lone) / mean_total("seed") if same_machine else None
    result = {"workload": args.workload, "precision_option": args.precision, "retrain_precision_option": args.retrain_precision,
              "fold_mode_option": args.fold_mode,
              "device_option": args.device, "seed_backend": args.seed_backend, "train_limit": limit, "epochs": epochs, "retrain_epochs": final,
              "machine": machine(), "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
              "ratio_total": None if ratio is None else round(ratio, 3), "rows": rows}
    if args.also_fold_mode:
        other = f"{lone} --fold-mode {args.also_fold_mode}"
        result[f"{args.also_fold_mode}_over_main"] = round(mean_total(other) / mean_total(lone), 3)
        result[f"search_{args.also_fold_mode}_over_main"] = round(
            mean_total(other, "search_s") / mean_total(lone, "search_s"), 3)
    if args.ray:
        result["ratio_ray_total"] = round(mean_total(lone + " --ray") / mean_total("seed"), 3) if same_machine else None
        result["ray_over_lone"] = round(mean_total(lone + " --ray") / mean_total(lone), 3)
    print(table(rows, ratio))
    if args.also_fold_mode:
        print(f"--fold-mode {args.also_fold_mode} / --fold-mode {args.fold_mode}: whole job "
              f"{result[f'{args.also_fold_mode}_over_main']:.2f}, search {result[f'search_{args.also_fold_mode}_over_main']:.2f}")
    if args.ray:
        print(f"tuner-app --ray / seed {result['ratio_ray_total'] or 'none'}; --ray / lone {result['ray_over_lone']:.2f}")
    if args.seed_from:
        print(f"seed row(s) from {rows[0]['from']}, not run again")
    print(f"machine: {result['machine']}; {result['date']}; {result['command']}")
    if args.dry_run and not args.json:
        print("dry run: nothing recorded")
        return
    name = (f"{args.workload}-{args.backend}" + (f"-{args.device}" if args.device == "gpu" else "")
            + (f"-{args.precision}" if args.precision != "auto" else "")
            + (f"-retrain-{args.retrain_precision}" if args.retrain_precision != "float32" else "")
            + (f"-{args.fold_mode}" if args.fold_mode != "auto" else "")
            + (f"-workers{args.workers}" if args.workers else "") + ("-ray" if args.ray else "") + (f"-and-{args.also_fold_mode}" if args.also_fold_mode else ""))
    path = args.json or ROOT / "benchmarks" / "results" / f"{name}-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
