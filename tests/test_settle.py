"""Backend, device and precision choices."""
import pytest
from conftest import MODELS

from tuner_app.config import CVConfig
from tuner_app.errors import UsageError
from tuner_app.runtime.hardware import resolve
from tuner_app.settle import precision_for as precision
from tuner_app.tuning.plan import plan_search

GRID = {"filters": ["8,16"], "learning_rate": [0.01, 0.001], "dense_units": [16]}


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
    from tuner_app.runtime import hardware

    cpu = hardware.Cpu(vendor=vendor, model="", family_model="", flags=frozenset(flags))
    monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    assert precision("auto", {"backend": backend, "device": "cpu", "gpus": []}) == expected




def test_unknown_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="--precision 'fp8'"):
        precision("fp8", {"backend": "tensorflow", "device": "cpu", "gpus": []})


def test_a_resume_or_a_worker_adopts_what_the_search_recorded(monkeypatch):
    from tuner_app.settle import settle

    for var in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS"):  # settle(device=cpu) sets them: restored after
        monkeypatch.delenv(var, raising=False)
    recorded = {"device": "cpu", "cv": {"precision": "mixed_bfloat16"}}
    adopted = settle(None, "auto", "auto", recorded=recorded)
    assert adopted.device == "cpu" and adopted.precision == "mixed_bfloat16"
    # an explicit choice is kept as asked (a resume then refuses another precision: tests/tuning/test_plan_and_run.py)
    assert settle(None, "auto", "float32", recorded=recorded).precision == "float32"
    assert settle(None, "auto", "auto").precision == precision("auto", resolve("auto"))  # a new search resolves




def decide_fold_mode(plan, stored=None, device="cpu", ray=False):
    """(fold mode, why) as `tuner_app.settle` decides them for `plan` on `device`."""
    import keras

    from tuner_app.config import Settled
    from tuner_app.settle import settle_fold_mode
    from tuner_app.tuning.plan import fold_steps

    settled = Settled(keras.backend.backend(), device, precision=plan.cv.precision)
    settled = settle_fold_mode(settled, plan.cv.fold_mode, fold_steps(plan), plan.check.fused_blocker, stored, ray)
    return settled.fold_mode, settled.why


def resolve_fold_mode(plan, stored=None, device="cpu", ray=False):
    return decide_fold_mode(plan, stored, device, ray)[0]


@pytest.mark.parametrize("cpu", ["amd-avx512-bf16", "intel-amx", "intel", None])
def test_auto_fold_mode_is_fused_on_a_gpu_and_on_a_cpu_for_folds_as_long_as_its_class_records_fused_faster(
        small_dataset, cpu, monkeypatch):
    import dataclasses

    import keras

    from tuner_app.runtime import hardware
    from tuner_app.settle import CPU_FUSED_MIN_STEPS
    from tuner_app.tuning.plan import fold_steps

    monkeypatch.setattr(hardware, "cpu_class", lambda: cpu)
    short = plan_search(small_dataset, "seed", GRID, CVConfig(folds=5, epochs=1, batch_size=128), train_limit=600)
    assert fold_steps(short) == 4  # 480 training rows of a fold in batches of 128

    def plan(epochs, precision):
        return dataclasses.replace(short, cv=dataclasses.replace(short.cv, epochs=epochs, precision=precision))

    tensorflow = keras.backend.backend() == "tensorflow"
    least = CPU_FUSED_MIN_STEPS.get(cpu)
    epochs = -(-(least or 100) // 4)  # the fewest epochs that reach the threshold
    precision = "float32"
    assert fold_steps(plan(epochs, precision)) >= (least or 100) > fold_steps(plan(epochs - 1, precision))
    mode, why = decide_fold_mode(plan(epochs - 1, precision), device="cpu")
    assert mode == "sequential" and why.startswith("not fused: ") if tensorflow else "under" in why
    fused_here = tensorflow and least is not None
    assert resolve_fold_mode(plan(epochs, precision), device="cpu") == ("fused" if fused_here else "sequential")
    assert resolve_fold_mode(plan(epochs, precision), device="cpu", ray=True) == "sequential"  # folds as tasks
    for short_or_long in (1, epochs - 1, epochs):
        assert decide_fold_mode(plan(short_or_long, precision), device="gpu") == ("fused", None)
    for where in ("cpu", "gpu"):  # in bfloat16 fused and sequential folds round apart: not picked
        assert decide_fold_mode(plan(epochs, "mixed_bfloat16"), device=where) == (
            "sequential", "not fused: fused folds are exact in float32 only")
    if tensorflow and least is None:
        assert decide_fold_mode(plan(200, "float32"), device="cpu")[1] == "not fused: no record of this CPU class"
    # a resumed project keeps its own; an explicit choice is taken as given
    long = plan(2000, "float32")
    assert resolve_fold_mode(short, {"cv": {"fold_mode": "fused"}}, "cpu") == "fused"
    assert resolve_fold_mode(long, {"cv": {"fold_mode": "sequential"}}, "gpu") == "sequential"
    given = dataclasses.replace(long, cv=dataclasses.replace(long.cv, fold_mode="sequential"))
    assert resolve_fold_mode(given, device="gpu") == "sequential"
    given = dataclasses.replace(short, cv=dataclasses.replace(short.cv, fold_mode="fused"))
    assert resolve_fold_mode(given, device="cpu") == "fused"


def test_auto_fold_mode_is_sequential_for_a_model_that_cannot_train_fused_or_has_its_own_fit(small_dataset):
    import keras_tuner

    from tuner_app.models.seed import SeedCNN

    class OwnFit(keras_tuner.HyperModel):  # a user's HyperModel that sets its own batch size
        def build(self, hp):
            return SeedCNN().build(hp)

        def fit(self, hp, model, *args, **kwargs):
            return model.fit(*args, **{**kwargs, "batch_size": 32})

    long = CVConfig(folds=2, epochs=50, batch_size=32)
    own = plan_search(small_dataset, OwnFit(), GRID, long, train_limit=200)
    blocked = plan_search(small_dataset, f"{MODELS / 'own_step.py'}:build", None, long, train_limit=200)
    assert own.check.own_fit and own.check.fused_blocker.startswith("its HyperModel has its own fit()")
    assert blocked.check.fused_blocker == "it has its own train_step()"
    for plan in (own, blocked):
        assert resolve_fold_mode(plan, device="gpu") == "sequential"
        assert decide_fold_mode(plan, device="cpu") == ("sequential", f"not fused: {plan.check.fused_blocker}")
