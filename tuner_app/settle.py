"""Every choice a search makes from the hardware, made here, once, before it starts.

`settle` configures the Keras backend and decides the device and the precision;
`settle_fold_mode` then decides the fold mode from the search's plan. The result is one
`Settled` value that the rest of the code reads (`tuner_app.api` makes it, for the CLI and for
a notebook). The process that creates a project decides; search.json records the device,
the precision and the fold mode, and a resume or a worker adopts them (an explicit other
choice is then refused like any changed setting). A KerasTuner chief trains nothing: it hides
the GPUs from its own backend and decides for its workers from what `nvidia-smi` shows.

Each rule rests on benchmark records of the hardware class it names (docs/concepts.md: "Precision",
"When auto fuses"; the records: docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import os

from tuner_app.config import Settled
from tuner_app.errors import UsageError
from tuner_app.runtime import hardware
from tuner_app.runtime.hardware import (
    DEVICES,
)

PRECISIONS = {"auto": None, "float32": "float32", "mixed": "mixed_bfloat16"}


def settle(backend: str | None, device: str = "auto", precision: str = "auto", role: str | None = None,
           recorded: dict | None = None, threads: int | None = None) -> Settled:
    """Configure the backend and decide the search's device and precision, once.

    Args:
        backend: "tensorflow", "jax" or "torch"; None keeps KERAS_BACKEND (default tensorflow).
        device: "auto", "cpu" or "gpu" as asked.
        precision: "auto", "float32" or "mixed" as asked.
        role: None (a lone process), "chief" or "worker" (KerasTuner's distributed roles).
        recorded: The project's search.json when it exists: its device and precision are
            adopted where `device`/`precision` are "auto".
        threads: CPU threads for training (None: the backend's default, all cores).

    Returns:
        The `Settled` device and precision the search trains in (its fold mode: `settle_fold_mode`).
    """
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: choose one of {', '.join(hardware.DEVICES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    policy = PRECISIONS[precision]
    if recorded:
        device = recorded.get("device", device) if device == "auto" else device
        policy = policy or (recorded.get("cv") or {}).get("precision")
    if role == "chief":  # trains nothing: decide for the workers from nvidia-smi, keep the GPUs free
        gpus = hardware.visible_gpus()
        device = device if device != "auto" else ("gpu" if gpus else "cpu")
        fast = hardware.visible_gpus_have_bf16() if device == "gpu" else cpu_bf16_faster(backend or os.environ.get("KERAS_BACKEND"))
        hardware.configure(backend, "cpu", threads)  # hides the GPUs from this process's backend
        return Settled(hardware.resolve("cpu")["backend"], device, tuple(gpus), policy or ("mixed_bfloat16" if fast else "float32"),
                       role=role)
    hardware.configure(backend, device, threads)
    info = hardware.resolve(device)
    return Settled(info["backend"], info["device"], tuple(info["gpus"]), policy or precision_for("auto", info), role=role)


def precision_for(requested: str, info: dict) -> str:
    """The Keras dtype policy to train with: "float32" or "mixed_bfloat16".

    `auto` takes bfloat16 arithmetic (float32 weights) where it was measured faster: a GPU of
    compute capability 8.0 or newer (A100, H100, ...); a CPU with AMX-BF16 matrix units (Intel
    Sapphire Rapids and newer, where the VM shows them), every backend; an AMD CPU with
    AVX512_BF16 (Zen 4 and newer) under TensorFlow or PyTorch, where the seed's searches ran
    1.3-1.4x faster. On an Intel CPU with AVX512_BF16 but no AMX in sight (a 5th-generation
    Xeon whose VM hides AMX) the `medium` search ran 1.33x slower in bfloat16 under TensorFlow
    and epochs 5-10% slower under PyTorch, so it stays float32, as do JAX on AVX512_BF16
    (unmeasured) and everything else (docs/concepts.md "Precision").

    Args:
        requested: "auto", "float32" or "mixed".
        info: What `resolve` returned.
    """
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if PRECISIONS[requested]:
        return PRECISIONS[requested]
    fast = hardware.gpu_has_bf16(info["backend"]) if info["device"] == "gpu" else cpu_bf16_faster(info["backend"])
    return "mixed_bfloat16" if fast else "float32"


def cpu_bf16_faster(backend: str | None) -> bool:
    """Whether bfloat16 training is faster than float32 on this CPU with `backend` (see `precision_for`)."""
    cpu = hardware.cpu_info()
    if "amx_bf16" in cpu.flags:
        return True
    return ("avx512_bf16" in cpu.flags and cpu.vendor == "AuthenticAMD"
            and (backend or "tensorflow") in ("tensorflow", "torch"))


# `--fold-mode auto` under TensorFlow on a CPU: fused once each fold trains at least this many steps (its
# batches times epochs), by CPU class, each the shortest folds whose records show fused faster there
# (docs/concepts.md "When auto fuses"); a CPU class without records trains sequentially.
CPU_FUSED_MIN_STEPS = {
    "amd-avx512-bf16": 100,  # fused 0.95 at 150 steps (medium-tensorflow-amd-2026-12-01.json), 1.20 at 19
    "intel-amx": 100,  # fused 0.93 at 150 steps (medium-tensorflow-amx-2026-12-01.json), 1.22 at 19
    "intel": 1875,  # fused 1.05 at 150 steps (medium-tensorflow-intel-*-2026-11-30b.json), 0.94 at 1,875
}


def settle_fold_mode(settled: Settled, asked: str, steps: int, blocker: str | None = None,
                     recorded: dict | None = None, ray: bool = False) -> Settled:
    """`settled` with the search's fold mode, and why `auto` took sequential (see `fold_mode_for`).

    Args:
        settled: What `settle` decided.
        asked: `--fold-mode` as given: "auto", "fused" or "sequential".
        steps: The training steps of a fold that runs all its epochs (`tuner_app.tuning.plan.fold_steps`).
        blocker: Why the model cannot train fused exactly (`tuner_app.models.preflight`), or None.
        recorded: The project's search.json when it exists (a resume keeps its fold mode).
        ray: Whether the folds run as Ray tasks.
    """
    mode, why = fold_mode_for(asked, recorded, blocker, settled.precision, settled.device, ray, settled.backend, steps)
    return dataclasses.replace(settled, fold_mode=mode, why=why)


def fold_mode_for(asked: str, recorded: dict | None, blocker: str | None, precision: str, device: str, ray: bool,
                  backend: str, steps: int) -> tuple[str, str | None]:
    """(fold mode, why `auto` took sequential, or None). An explicit `--fold-mode` as given; a resumed
    project's own; else sequential for a model that cannot train fused exactly
    (`tuner_app.models.preflight.fused_blocker`) and in bfloat16 (where the two round apart); else
    fused on a GPU. On a CPU under TensorFlow, fused where each fold trains at least
    `CPU_FUSED_MIN_STEPS` steps (`steps`) for this CPU's class: a fused trial traces its K-member
    step once per architecture (seconds more than one model's), then saves a few milliseconds on
    every step. Sequential under PyTorch and JAX on a CPU (not measured fused there), and on the
    CPUs of a Ray cluster (there a trial's folds are tasks spread over the workers; fused, they
    would be one task)."""
    if asked != "auto":
        return asked, None
    if recorded and isinstance(recorded.get("cv"), dict):
        return recorded["cv"]["fold_mode"], None
    if blocker:
        return "sequential", f"not fused: {blocker}"
    if precision != "float32":  # (docs/concepts.md "Fused folds": in bfloat16 the two paths round apart)
        return "sequential", "not fused: fused folds are exact in float32 only"
    if device == "gpu":
        return "fused", None
    if ray:
        return "sequential", "not fused: a trial's folds are Ray tasks"
    if backend != "tensorflow":
        return "sequential", f"not fused on a CPU under {backend}"
    least = CPU_FUSED_MIN_STEPS.get(hardware.cpu_class())
    if least is None:
        return "sequential", "not fused: no record of this CPU class"
    if steps < least:
        return "sequential", f"not fused: {steps} steps per fold, fused from {least} on this CPU"
    return "fused", None
