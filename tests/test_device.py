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


AMD, INTEL = "AuthenticAMD", "GenuineIntel"


@pytest.mark.parametrize(("vendor", "flags", "backend", "expected"), [
    (INTEL, {"avx512f", "amx_bf16", "avx512_bf16"}, "jax", "mixed_bfloat16"),  # AMX: every backend
    (AMD, {"avx512f", "avx512_bf16"}, "tensorflow", "mixed_bfloat16"),  # AMD AVX512_BF16: where measured faster
    (AMD, {"avx512f", "avx512_bf16"}, "torch", "mixed_bfloat16"),
    (AMD, {"avx512f", "avx512_bf16"}, "jax", "float32"),
    (INTEL, {"avx512f", "avx512_bf16", "avx512_fp16"}, "tensorflow", "float32"),  # no AMX in sight: measured slower
    (INTEL, {"avx512f", "avx512_bf16", "avx512_fp16"}, "torch", "float32"),
    (INTEL, {"avx512f", "avx2"}, "tensorflow", "float32"),
    ("", set(), "tensorflow", "float32"),
])
def test_auto_precision_on_cpu_follows_what_was_measured_on_the_cpus_kind(monkeypatch, vendor, flags, backend, expected):
    from tuner_app import device

    cpu = device.Cpu(vendor=vendor, model="", family_model="", flags=frozenset(flags))
    monkeypatch.setattr(device, "cpu_info", lambda: cpu)
    assert precision("auto", {"backend": backend, "device": "cpu", "gpus": []}) == expected


def test_the_cpu_is_read_from_this_machines_first_processor():
    from tuner_app.device import cpu_info

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.split("\n\n")[0].splitlines())}
    cpu = cpu_info()
    assert cpu.flags == frozenset(first.get("flags", "").split())
    assert (cpu.vendor, cpu.model) == (first.get("vendor_id", ""), first.get("model name", ""))
    if first:
        assert cpu.family_model == f"{first['cpu family']}/{first['model']}"
        assert cpu.model in cpu.describe() and ("no AMX" in cpu.describe()) == ("amx_bf16" not in cpu.flags)


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


def test_the_cpu_classes_the_records_distinguish():
    from tuner_app.device import Cpu, cpu_class

    def cpu(vendor, *flags):
        return Cpu(vendor, "a CPU", "6/1", frozenset(flags))

    assert cpu_class(cpu("GenuineIntel", "avx512_bf16", "amx_bf16")) == "intel-amx"
    assert cpu_class(cpu("GenuineIntel", "avx512_bf16")) == "intel"
    assert cpu_class(cpu("AuthenticAMD", "avx512_bf16")) == "amd-avx512-bf16"
    assert cpu_class(cpu("AuthenticAMD", "avx2")) is None  # an AMD without AVX512_BF16: no record
    assert cpu_class(cpu("", )) is None  # an ARM or an unreadable /proc/cpuinfo
