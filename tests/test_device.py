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


def test_auto_precision_on_cpu_follows_the_cpus_bfloat16_matrix_units():
    flags = next((line.split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")),
                 []) if Path("/proc/cpuinfo").exists() else []
    info = {"backend": "tensorflow", "device": "cpu", "gpus": []}
    assert precision("auto", info) == ("mixed_bfloat16" if "amx_bf16" in flags else "float32")


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
