"""The benchmark scripts: the GPU command runs end to end on the CPU in its dry mode, against the
seed's own pipeline."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench


def test_the_seed_pipeline_in_the_repository_is_the_reference():
    copy = (ROOT / "benchmarks" / "seed_pipeline.py").read_bytes()
    assert hashlib.sha256(copy).hexdigest() == bench.SEED_PIPELINE_SHA256
    shared = ROOT.parent / "shared" / "bench" / "seed_pipeline.py"
    if shared.exists():  # beside a developer's checkout
        assert shared.read_bytes() == copy


def test_a_seed_row_from_another_machine_gives_no_ratio():
    here = {"who": "seed", "from": f"full-x.json (2026-11-29, {bench.machine()})"}
    other = {"who": "seed", "from": "full-x.json (2026-11-29, AMD EPYC, 2 cores, Linux)"}
    ran = {"who": "tuner-app"}
    assert bench.on_this_machine([here, ran]) and bench.on_this_machine([{"who": "seed"}, ran])
    assert not bench.on_this_machine([other, ran])
    assert "| none: the seed's row is from another machine |" in bench.table([other, ran], None)


BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


@pytest.mark.skipif(BACKEND not in ("torch", "jax"), reason="the GPU benchmark's backends are JAX and PyTorch: this "
                    "runs in the suite's PyTorch pass (KERAS_BACKEND=torch), once per CI run")
def test_the_gpu_benchmark_runs_dry_on_the_cpu():
    backend = BACKEND
    results = set((ROOT / "benchmarks" / "results").iterdir())
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "BACKENDS": backend}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| seed", "| tuner-app"))]
    assert len(rows) == 2
    assert f"| tuner-app | {backend} | cpu | fused |" in proc.stdout
    assert "ratio tuner-app / seed" in proc.stdout and "dry run: nothing recorded" in proc.stdout
    assert set((ROOT / "benchmarks" / "results").iterdir()) == results
