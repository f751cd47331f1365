"""What this machine has and what the Keras backend sees: facts, no choices.

`configure` selects the backend and hides GPUs (before Keras is imported: Keras reads
KERAS_BACKEND once, and hiding GPUs only works before the backend initialises them);
`resolve` reports the device the backend uses; `cpu_info`, `cpu_class`, `visible_gpus` and the
`*_bf16` functions describe the hardware without loading a backend where they can. The
choices made from these facts (device, precision, fold mode) are `tuner_app.settle`'s.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

from tuner_app.errors import UsageError

BACKENDS = ("tensorflow", "jax", "torch")
DEVICES = ("auto", "cpu", "gpu")


def configure(backend: str | None = None, device: str = "auto", threads: int | None = None) -> None:
    """Select the Keras backend and hide GPUs for `device='cpu'`; call before importing Keras.

    Args:
        backend: "tensorflow", "jax" or "torch"; None keeps KERAS_BACKEND (default tensorflow).
        device: "auto", "cpu" or "gpu".
        threads: CPU threads for training (None: the backend's default).
    """
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    wanted = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != wanted:
            raise UsageError(f"Keras is already running on {current}; set KERAS_BACKEND={wanted} before importing keras")
    os.environ["KERAS_BACKEND"] = wanted
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["JAX_PLATFORMS"] = "cpu"
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"--threads {threads}: must be an integer >= 1")
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = str(threads)
    try:
        with native_stderr_muted():
            import keras  # noqa: F401  (import now: a missing backend is a usage error)
            import keras_tuner  # noqa: F401
            if importlib.util.find_spec("tensorflow") is not None:
                # keras.utils.set_random_seed imports TensorFlow whenever it is installed, whatever the
                # backend: import it here, muted, rather than mid-search with its start-up lines.
                import tensorflow  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--backend {wanted}: the backend is not installed ({e}); pip install {wanted}") from None
    if threads and wanted == "torch":
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def native_stderr_muted():
    """Drop what native code writes to fd 2 meanwhile (TensorFlow's absl start-up lines,
    which no environment variable silences), so errors stay one line; replayed on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _gpus(backend: str) -> list[str]:
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            try:  # share the GPU with other processes rather than grabbing all of it
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass  # already initialised
        return [g.name for g in gpus]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    return []


def resolve(device: str = "auto") -> dict:
    """Check the request against what the backend sees; return {'backend', 'device', 'gpus'}.

    Raises:
        UsageError: `device='gpu'` but the backend sees no GPU.
    """
    import keras

    backend = keras.backend.backend()
    with native_stderr_muted():  # initialise the devices now, muted: TensorFlow logs a failed cuInit
        gpus = _gpus(backend)
    gpus = [] if device == "cpu" else gpus
    if device == "gpu" and not gpus:
        raise UsageError(f"--device gpu: the {backend} backend sees no GPU; use --device cpu, or check the driver/CUDA_VISIBLE_DEVICES")
    return {"backend": backend, "device": "gpu" if gpus else "cpu", "gpus": gpus}


def visible_gpus() -> list[str]:
    """GPU indices this host shows (CUDA_VISIBLE_DEVICES, else nvidia-smi), without loading a backend."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    return [row[0] for row in _nvidia_smi("index")]


def _nvidia_smi(*fields: str) -> list[list[str]]:
    """Rows of `nvidia-smi --query-gpu=FIELDS` ([] without nvidia-smi or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def visible_gpus_have_bf16() -> bool:
    """Whether the GPUs the workers get are compute capability >= 8.0 (from nvidia-smi; unknown: False)."""
    wanted = set(visible_gpus())
    try:
        caps = [float(cap) for index, cap in _nvidia_smi("index", "compute_cap") if index in wanted]
    except ValueError:
        return False
    return bool(caps) and min(caps) >= 8.0


class Cpu(NamedTuple):
    """What /proc/cpuinfo says of the first CPU (empty strings and no flags elsewhere)."""

    vendor: str  # "GenuineIntel", "AuthenticAMD", ...
    model: str  # "model name", e.g. "AMD EPYC 9R14"
    family_model: str  # "6/207": a CPU generation ("model name" is often generic in a VM)
    flags: frozenset[str]

    def describe(self) -> str:
        """The model and what the precision choice rests on, e.g. "... (6/207; AVX512_BF16, no AMX)"."""
        isa = ["AMX-BF16" if "amx_bf16" in self.flags else None,
               "AVX512_BF16" if "avx512_bf16" in self.flags else None]
        isa = [i for i in isa if i] + ([] if "amx_bf16" in self.flags else ["no AMX"])
        return f"{self.model or platform.machine()} ({self.family_model or '?'}; {', '.join(isa)})"


def cpu_info() -> Cpu:
    """This machine's CPU as /proc/cpuinfo gives its first processor (empty fields elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    return Cpu(vendor=fields.get("vendor_id", ""), model=fields.get("model name", ""),
               family_model=f"{family}/{model}" if family and model else "",
               flags=frozenset(fields.get("flags", "").split()))


def cpu_class(cpu: Cpu | None = None) -> str | None:
    """The class of CPU the benchmark records distinguish: "intel-amx", "amd-avx512-bf16", "intel"
    (no AMX), or None (another, unrecorded)."""
    cpu = cpu or cpu_info()
    if "amx_bf16" in cpu.flags:
        return "intel-amx"
    if cpu.vendor == "AuthenticAMD" and "avx512_bf16" in cpu.flags:
        return "amd-avx512-bf16"
    return "intel" if cpu.vendor == "GenuineIntel" else None


def gpu_has_bf16(backend: str) -> bool:
    try:
        if backend == "torch":
            import torch

            return torch.cuda.get_device_capability(0) >= (8, 0)
        if backend == "jax":
            import jax

            gpu = next(d for d in jax.devices() if d.platform != "cpu")
            return float(getattr(gpu, "compute_capability", "0")) >= 8.0
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return tuple(details.get("compute_capability", (0, 0))) >= (8, 0)
    except (ImportError, RuntimeError, ValueError, AttributeError, IndexError, StopIteration):  # unknown: float32
        return False
