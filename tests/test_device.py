"""Backend, device and precision choices."""

from pathlib import Path

import pytest

from tuner_app.device import resolve
from tuner_app.device import resolve_precision as precision
from tuner_app.errors import UsageError


def test_explicit_precision_is_taken_as_asked():
    info = resolve("auto")
    assert precision("float32", info) == "float32"
    assert precision("mixed", info) == "mixed_bfloat16"


@pytest.mark.parametrize(("flags", "backend", "expected"), [
    ({"avx512f", "amx_bf16", "avx512_bf16"}, "jax", "mixed_bfloat16"),  # AMX: every backend
    ({"avx512f", "avx512_bf16"}, "tensorflow", "mixed_bfloat16"),  # AVX512_BF16 only: where measured faster
    ({"avx512f", "avx512_bf16"}, "torch", "mixed_bfloat16"),
    ({"avx512f", "avx512_bf16"}, "jax", "float32"),
    ({"avx512f", "avx2"}, "tensorflow", "float32"),
    (set(), "tensorflow", "float32"),
])
def test_auto_precision_on_cpu_follows_the_cpus_bfloat16_support(monkeypatch, flags, backend, expected):
    from tuner_app import device

    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    assert precision("auto", {"backend": backend, "device": "cpu", "gpus": []}) == expected


def test_cpu_flags_are_read_from_this_machine():
    from tuner_app.device import cpu_flags

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    first = next((line for line in lines if line.startswith("flags")), None)
    assert cpu_flags() == (set(first.split(":", 1)[1].split()) if first else set())


def test_unknown_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="--precision 'fp8'"):
        precision("fp8", {"backend": "tensorflow", "device": "cpu", "gpus": []})


def test_a_resume_or_a_worker_adopts_what_the_search_recorded(monkeypatch):
    from tuner_app.device import settle

    for var in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS"):  # settle(device=cpu) sets them: restored after
        monkeypatch.delenv(var, raising=False)
    recorded = {"device": "cpu", "cv": {"precision": "mixed_bfloat16"}}
    adopted = settle(None, "auto", "auto", recorded=recorded)
    assert adopted["device"] == "cpu" and adopted["precision"] == "mixed_bfloat16"
    # an explicit choice is kept as asked (a resume then refuses another precision: tests/test_search.py)
    assert settle(None, "auto", "float32", recorded=recorded)["precision"] == "float32"
    assert settle(None, "auto", "auto")["precision"] == precision("auto", resolve("auto"))  # a new search resolves
