"""Check a hypermodel against the data before a search writes anything.

`check_model` builds the first grid point, runs it forward on a few images and evaluates it
on them, so that a model that cannot be built, is not compiled, does not take the images,
does not end in one output per class, or does not compute the objective is a one-line
usage error before any state exists, not a failed trial. It also finds the form of labels
the model's loss takes (integers for a sparse loss, else one-hot) and the metric names a
fold will record.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import keras_tuner
import numpy as np

from tuner_app import models
from tuner_app.errors import DataError, ModelError, SettingError, UsageError
from tuner_app.models import LoadedModel

PROBE_IMAGES = 8
LARGEST_SIDE_TRIED = 512


@dataclass(frozen=True)
class ModelCheck:
    """What the check learnt about the model.

    Args:
        label_form: "sparse" (integer labels) or "one_hot", from the compiled loss.
        metrics: The names a fold's history holds (loss, accuracy, val_loss, val_accuracy, ...).
        params: Parameter count of the first grid point's model.
        fused_blocker: Why the folds of this model cannot train fused (None: they can).
        own_fit: The hypermodel has its own `fit` (not a tuner-app preset's).
    """

    label_form: str
    metrics: tuple[str, ...]
    params: int
    fused_blocker: str | None = None
    own_fit: bool = False


def fused_blocker(model: keras.Model) -> str | None:
    """Why `model`'s folds cannot train fused exactly as they train one by one (the contract of
    `tuner_app.training.fused_model`), or None: one input and one output, Keras' own train and test steps
    (the fused step is theirs), and an optimizer that does not scale its loss (members sum their
    losses into one backward pass, which one loss scale would have to serve)."""
    for kind in ("inputs", "outputs"):
        try:
            count = len(getattr(model, kind) or [None])
        except (AttributeError, ValueError):  # a subclassed model: called as one layer
            count = 1
        if count != 1:
            return f"it has {count} {kind}"
    for step in ("train_step", "test_step"):
        if getattr(type(model), step) is not getattr(keras.Model, step):
            return f"it has its own {step}()"
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or getattr(optimizer, "loss_scale_factor", None):
        return "its optimizer scales the loss"
    return None


OWN_FIT_BLOCKER = "its HyperModel has its own fit(), which may choose the batch size or the data order"


def own_fit(hypermodel: keras_tuner.HyperModel) -> bool:
    """True when the hypermodel overrides `fit` and is not one of tuner-app's presets."""
    return type(hypermodel).fit is not keras_tuner.HyperModel.fit and not isinstance(hypermodel, models.Preset)


def label_form(model: keras.Model) -> str:
    """'sparse' when the compiled loss takes class indices, else 'one_hot'."""
    loss = model.loss
    name = loss if isinstance(loss, str) else (getattr(loss, "name", None) or getattr(loss, "__name__", None)
                                                or type(loss).__name__)
    return "sparse" if "sparse" in str(name).lower() else "one_hot"


def labels(y: np.ndarray, form: str, num_classes: int) -> np.ndarray:
    """Integer labels in the form the loss takes."""
    return y if form == "sparse" else np.eye(num_classes, dtype=np.float32)[y]


def check_model(loaded: LoadedModel, values: dict, x: np.ndarray, y: np.ndarray, num_classes: int,
                objective: str, precision: str = "float32", given: tuple[str, ...] = ()) -> ModelCheck:
    """Build `values` (the first grid point) and try it on a few of the images.

    Args:
        loaded: The model.
        values: Hyperparameter values to build with.
        x: Scaled images (N, H, W, C).
        y: Integer labels.
        num_classes: Classes in the data.
        objective: The metric that will score folds.
        precision: The dtype policy the search trains in.
        given: The hyperparameters whose values the user gave (`--grid`), named in a failure's fix.

    Raises:
        ModelError: with one line naming the model and the fix.
        DataError: the images are smaller than the model accepts.
    """
    spec, shape = loaded.spec, tuple(x.shape[1:])
    try:
        model = models.build(loaded.hypermodel, models.hyperparameters(values), precision)
    except Exception as e:  # noqa: BLE001 - whatever the user's build raises
        raise failure(loaded, values, shape, e, "building it", given=given) from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"--model {spec}: build(hp) returned {type(model).__name__}, not a Keras model; return the "
                         "compiled keras.Model")
    if not getattr(model, "compiled", False) or model.optimizer is None or model.loss is None:
        raise ModelError(f"--model {spec}: the model is not compiled; call model.compile(optimizer=..., loss=..., "
                         "metrics=['accuracy']) in build(hp) before returning it")
    sample = x[:PROBE_IMAGES]
    try:
        out = keras.ops.convert_to_numpy(model(sample, training=False))
    except Exception as e:  # noqa: BLE001
        raise failure(loaded, values, shape, e, "running it on the images", model, given) from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ModelError(f"--model {spec}: the model's output has shape {(None, *out.shape[1:])} but the data has "
                         f"{num_classes} classes; end the model with Dense({num_classes}) (build may take num_classes)")
    form = label_form(model)
    try:
        scores = model.evaluate(sample, labels(y[:PROBE_IMAGES], form, num_classes), batch_size=len(sample),
                                verbose=0, return_dict=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"--model {spec}: evaluating it on the data failed with {models.one_line(e)}"
                         f"{models.error_location(e, loaded)}; check its loss against {form} labels") from None
    names = tuple(scores) + tuple(f"val_{name}" for name in scores)
    if objective not in names:
        raise ModelError(f"--objective {objective}: model {spec} computes {', '.join(names)}; pick one of those, or "
                         "compile the metric into the model")
    params, blocker = int(model.count_params()), fused_blocker(model)
    if blocker is None and own_fit(loaded.hypermodel):
        blocker = OWN_FIT_BLOCKER
    keras.backend.clear_session()
    return ModelCheck(form, names, params, blocker, own_fit(loaded.hypermodel))


def failure(loaded: LoadedModel, values: dict, shape: tuple, e: Exception, doing: str, model=None,
            given: tuple[str, ...] = ()) -> Exception:
    """A DataError when the images are too small for the model; a UsageError naming `--grid` when a
    preset refused a value given there (a preset is not the user's to fix); else a ModelError quoting
    `e`, whose fix names the `given` values too."""
    if isinstance(e, SettingError) and isinstance(loaded.hypermodel, models.Preset) and e.name in given:
        comma = ("; a value holding a comma goes in a JSON list: --grid "
                 f"'{e.name}=[\"A,B\",\"C,D\"]'" if isinstance(e.value, str) else "")
        return UsageError(f"--grid {e.name}={e.value}: {e.rule}{comma}")
    smallest = smallest_side(loaded, values, shape)
    if smallest is not None:
        return DataError(f"data: images are {shape[0]}x{shape[1]} but model {loaded.spec} needs at least "
                         f"{smallest}x{smallest}; resize or pad the images, or choose a model for smaller images")
    expected = getattr(model, "inputs", None) and tuple(model.inputs[0].shape[1:])
    if expected and expected != shape:
        return ModelError(f"--model {loaded.spec}: its input is {expected} but the data's images are {shape}; "
                          "build the model for the data (build(hp) and HyperModel constructors may take input_shape)")
    point = " ".join(f"{k}={v}" for k, v in values.items())
    named = [name for name in values if name in given]
    fix = f"check the values given with --grid {', '.join(named)}, or fix the model" if named else "fix the model"
    return ModelError(f"--model {loaded.spec}: {doing} with {point or 'its defaults'} raised {models.one_line(e)}"
                      f"{models.error_location(e, loaded)}; {fix}")


def smallest_side(loaded: LoadedModel, values: dict, shape: tuple) -> int | None:
    """The smallest square image side the model accepts, when larger images than `shape` work and
    smaller do not (a model that shrinks its input away); None when size is not the problem."""
    if loaded.remake is None:
        return None
    channels = shape[2:] or (1,)

    def accepts(side: int) -> bool:
        try:
            model = models.build(loaded.remake((side, side, *channels)), models.hyperparameters(values))
            model(np.zeros((1, side, side, *channels), np.float32), training=False)
            return True
        except Exception:  # noqa: BLE001
            return False
        finally:
            keras.backend.clear_session()

    bad, good = max(shape[0], shape[1]), None
    side = bad
    while side < LARGEST_SIDE_TRIED:
        side = min(side * 2, LARGEST_SIDE_TRIED)
        if accepts(side):
            good = side
            break
        bad = side
    if good is None:
        return None
    while good - bad > 1:  # binary search for the smallest side that works
        mid = (bad + good) // 2
        bad, good = (bad, mid) if accepts(mid) else (mid, good)
    return good
