"""Keras backend and device selection: auto, cpu or gpu, on tensorflow, jax or torch.

`configure` must run before Keras is imported (Keras reads KERAS_BACKEND once, and
hiding GPUs only works before the backend initialises them); `resolve` runs after and
reports what is actually in use.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from tuner_app.errors import UsageError

BACKENDS = ("tensorflow", "jax", "torch")
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = {"auto": None, "float32": "float32", "mixed": "mixed_bfloat16"}


def configure(backend: str | None = None, device: str = "auto") -> None:
    """Select the Keras backend and hide GPUs for `device='cpu'`; call before importing Keras.

    Args:
        backend: "tensorflow", "jax" or "torch"; None keeps KERAS_BACKEND (default tensorflow).
        device: "auto", "cpu" or "gpu".
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
    threads = os.environ.get("TUNER_APP_THREADS")  # set by the --workers launcher to share the cores
    if threads:
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = threads
    try:
        with native_stderr_muted():
            import keras  # noqa: F401  (import now: a missing backend is a usage error)
    except ImportError as e:
        raise UsageError(f"--backend {wanted}: the backend is not installed ({e}); pip install {wanted}") from None
    if threads and wanted == "torch":
        import torch

        torch.set_num_threads(int(threads))


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
    with native_stderr_muted():
        gpus = [] if device == "cpu" else _gpus(backend)
    if device == "gpu" and not gpus:
        raise UsageError(f"--device gpu: the {backend} backend sees no GPU; use --device cpu, or check the driver/CUDA_VISIBLE_DEVICES")
    return {"backend": backend, "device": "gpu" if gpus else "cpu", "gpus": gpus}


def precision(requested: str, info: dict) -> str:
    """The Keras dtype policy to train with: "float32" or "mixed_bfloat16".

    `auto` takes bfloat16 arithmetic (float32 weights) where the hardware runs it natively
    and much faster: a GPU of compute capability 8.0 or newer (A100, H100, ...), or a CPU
    with AMX-BF16 matrix units (Intel Sapphire Rapids and newer). Everywhere else float32.

    Args:
        requested: "auto", "float32" or "mixed".
        info: What `resolve` returned.
    """
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if PRECISIONS[requested]:
        return PRECISIONS[requested]
    fast = _gpu_has_bf16(info["backend"]) if info["device"] == "gpu" else _cpu_has_amx_bf16()
    return "mixed_bfloat16" if fast else "float32"


def _cpu_has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def _gpu_has_bf16(backend: str) -> bool:
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
