"""What the hardware is: the CPU's class and features (the facts `tuner_app.settle` decides from)."""

from pathlib import Path


def test_the_cpu_is_read_from_this_machines_first_processor():
    from tuner_app.runtime.hardware import cpu_info

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.split("\n\n")[0].splitlines())}
    cpu = cpu_info()
    assert cpu.flags == frozenset(first.get("flags", "").split())
    assert (cpu.vendor, cpu.model) == (first.get("vendor_id", ""), first.get("model name", ""))
    if first:
        assert cpu.family_model == f"{first['cpu family']}/{first['model']}"
        assert cpu.model in cpu.describe() and ("no AMX" in cpu.describe()) == ("amx_bf16" not in cpu.flags)


def test_the_cpu_classes_the_records_distinguish():
    from tuner_app.runtime.hardware import Cpu, cpu_class

    def cpu(vendor, *flags):
        return Cpu(vendor, "a CPU", "6/1", frozenset(flags))

    assert cpu_class(cpu("GenuineIntel", "avx512_bf16", "amx_bf16")) == "intel-amx"
    assert cpu_class(cpu("GenuineIntel", "avx512_bf16")) == "intel"
    assert cpu_class(cpu("AuthenticAMD", "avx512_bf16")) == "amd-avx512-bf16"
    assert cpu_class(cpu("AuthenticAMD", "avx2")) is None  # an AMD without AVX512_BF16: no record
    assert cpu_class(cpu("", )) is None  # an ARM or an unreadable /proc/cpuinfo
