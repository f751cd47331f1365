#!/usr/bin/env bash
# The GPU benchmark: the seed's pipeline and tuner-app's full job (`tuner-app run`) on full MNIST,
# on the same GPU, with the JAX and the PyTorch backends (TensorFlow is not needed), fused and
# sequential folds; a table per run on stdout and a JSON per run in benchmarks/results/. Per backend
# the seed runs once, beside the first fold mode's run; the next takes the seed's row from that record
# (same machine, so its ratio stands). Each record is written as its run ends: a machine taken back
# mid-way keeps the finished ones.
#
#   bash benchmarks/gpu.sh                   # on a GPU machine
#   bash benchmarks/gpu.sh --dry-run         # anywhere: the tiny workload on the CPU, records nothing (CI runs it)
#
# Environment: DATA (default ../shared/data/mnist: the four IDX files, .gz or not; --dry-run: the
# sample shipped with tuner-app), BACKENDS (default "jax torch": those installed are run),
# WHEELS (a folder of wheels for what the machine lacks, e.g. keras, keras-tuner, typer; they are
# installed with --no-index into /tmp/tuner-app-site first, for machines without a network),
# RESULTS (default benchmarks/results: where the records go), MODES (default "fused sequential": the
# fold modes, in this order), SEED_FROM_JAX / SEED_FROM_TORCH (an earlier record of this machine kind
# whose seed row to reuse instead of running the seed's pipeline again, e.g.
# benchmarks/results/full-jax-gpu-fused-2026-11-30.json: the seed took 273 s of a 15-minute lease).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1
BACKENDS=${BACKENDS:-jax torch}
MODES=${MODES:-fused sequential}
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results}

if [[ -n "${WHEELS:-}" ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/tuner-app-site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/tuner-app-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"

ran=0
for backend in $BACKENDS; do
    if ! "$PYTHON" -c "import $backend" 2>/dev/null; then
        echo "gpu.sh: $backend is not installed here: skipped" >&2
        continue
    fi
    common=(--backend "$backend" --seed-backend "$backend" ${DATA:+--data "$DATA"})
    if (( dry_run )); then
        "$PYTHON" benchmarks/bench.py --dry-run --fold-mode fused "${common[@]}"
        ran=1
        break  # one backend is enough to check the script
    fi
    seed_from_var="SEED_FROM_${backend^^}"
    seed_from=${!seed_from_var:-}
    for mode in $MODES; do
        record="$RESULTS/full-$backend-gpu-$mode-$(date +%F).json"
        "$PYTHON" benchmarks/bench.py --workload full --device gpu --fold-mode "$mode" "${common[@]}" \
            ${seed_from:+--seed-from "$seed_from"} --json "$record"
        seed_from=${seed_from:-$record}  # the first run's seed row serves the others
    done
    ran=1
done
if (( ! ran )); then
    echo "gpu.sh: none of the backends ($BACKENDS) is installed" >&2
    exit 1
fi
