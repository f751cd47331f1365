"""Models: the built-in presets and a user's own `build(hp)` or `keras_tuner.HyperModel`.

`load_model` turns what `--model` names into a `keras_tuner.HyperModel`:

    seed, extended            presets (`tuner_app.models.seed`, `tuner_app.models.extended`)
    path/to/file.py:NAME      NAME from a Python file
    package.module:NAME       NAME from an importable module

NAME is, as in KerasTuner, a function `build(hp)` returning a compiled Keras model, a
`keras_tuner.HyperModel` subclass, or an instance of one. A function or constructor that
accepts `input_shape` and/or `num_classes` keyword arguments is given the data's.

Every model is built through `build`, inside the search's dtype policy, so a user's model
trains in bfloat16 under `--precision mixed` without knowing about it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner

from tuner_app.errors import ModelError

PRESETS = {"seed": "tuner_app.models.seed:SeedCNN", "extended": "tuner_app.models.extended:ExtendedCNN"}
DATA_KWARGS = ("input_shape", "num_classes")


class BuildFunction(keras_tuner.HyperModel):
    """A `build(hp)` function as a HyperModel, with the data keyword arguments it accepts bound.

    Args:
        fn: The function.
        kwargs: Keyword arguments passed on every call (`input_shape`, `num_classes`).
    """

    def __init__(self, fn: Callable, kwargs: dict | None = None):
        super().__init__(name=getattr(fn, "__name__", "build"))
        self.fn, self.kwargs = fn, dict(kwargs or {})

    def build(self, hp):
        return self.fn(hp, **self.kwargs)


class Preset(keras_tuner.HyperModel):
    """Base of the built-in models: a HyperModel that knows the data's image shape and classes.

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: Number of output classes.
    """

    preset = "preset"  # the --model name

    def __init__(self, input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10):
        super().__init__(name=self.preset)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes


@dataclass
class LoadedModel:
    """A hypermodel ready to build, and where it came from (stored with the search).

    Args:
        spec: What was asked for: a preset name, `FILE.py:NAME`, `module:NAME`, or a Python object's name.
        hypermodel: The `keras_tuner.HyperModel`.
        file: The source file, when there is one (its hash guards a resume against edits).
        sha256: The hash of `file`.
        remake: Makes the hypermodel for another input shape (None when NAME is an instance, or
            does not take `input_shape`); used to find the smallest image a model accepts.
    """

    spec: str
    hypermodel: keras_tuner.HyperModel
    file: str | None = None
    sha256: str | None = None
    remake: Callable[[tuple], keras_tuner.HyperModel] | None = field(default=None, repr=False)

    @property
    def defaults(self) -> dict:
        """Search defaults the hypermodel suggests (`defaults = {"epochs": 15, ...}` on its class)."""
        return dict(getattr(self.hypermodel, "defaults", None) or {})

    def record(self) -> dict:
        """What search.json stores: the spec, and the file's hash for user models."""
        return {"spec": self.spec, "file": self.file, "sha256": self.sha256}


def load_model(model: Any = "seed", input_shape: tuple = (28, 28, 1), num_classes: int = 10) -> LoadedModel:
    """Resolve a preset name, `FILE.py:NAME`, `module:NAME`, or a Python object into a LoadedModel.

    Args:
        model: A string as for `--model`, a `keras_tuner.HyperModel` (class or instance), or a
            `build(hp)` function.
        input_shape: (H, W, C) of the data's images, passed to builders that accept it.
        num_classes: Number of classes, passed to builders that accept it.

    Raises:
        ModelError: the file or NAME is missing, or NAME is not a build function or HyperModel.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if isinstance(model, str):
        spec = model
        obj, file = _resolve(PRESETS.get(spec, spec), spec)
    else:
        obj, file = model, _source_file(model)
        spec = getattr(model, "__qualname__", type(model).__qualname__)
        spec = f"{getattr(model, '__module__', type(model).__module__)}:{spec}"
    make = _maker(obj, spec)
    if spec in PRESETS or not (file and Path(file).is_file()):
        file = None
    sha = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
    remake = None
    if not isinstance(obj, keras_tuner.HyperModel) and "input_shape" in _parameters(obj):
        remake = lambda shape: make(tuple(shape), num_classes)
    return LoadedModel(spec, make(input_shape, num_classes), file, sha, remake)


def _resolve(target: str, spec: str) -> tuple[Any, str | None]:
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ModelError(f"--model {spec!r}: give a preset ({', '.join(PRESETS)}), FILE.py:NAME or package.module:NAME")
    if names_file(where):
        module = _import_file(Path(where), spec)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` finds modules (uvicorn does too);
            sys.path.append(os.getcwd())  # last: a folder here does not shadow an installed package
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ModelError(f"--model {spec}: cannot import module {where!r} ({e}); check the name and PYTHONPATH, "
                             "or give a file as FILE.py:NAME") from None
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed while importing
            raise ModelError(f"--model {spec}: importing {where} raised {one_line(e)}") from None
    if not hasattr(module, name):
        found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and _is_model_like(v))
        raise ModelError(f"--model {spec}: {where} has no {name!r}"
                         + (f" (it defines {', '.join(found)})" if found else "") + "; check NAME after the colon")
    return getattr(module, name), getattr(module, "__file__", None)


def names_file(where: str) -> bool:
    """Whether the part of a `--model` spec before its colon is a file (FILE.py), not a module."""
    return where.endswith(".py") or "/" in where


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise ModelError(f"--model {spec}: no such file {path}; give the path of a Python file as FILE.py:NAME")
    name = f"tuner_app_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - anything the user's file raises, or a script's exit()
        del sys.modules[name]
        raise ModelError(f"--model {spec}: running {path} raised {one_line(e)}{_where(e, path)}"
                         + ("; a model file defines NAME, it does not run as a script: guard its script part with "
                            "if __name__ == '__main__':" if isinstance(e, SystemExit) else "")) from None
    return module


def _maker(obj: Any, spec: str) -> Callable[[tuple, int], keras_tuner.HyperModel]:
    """A function (input_shape, num_classes) -> HyperModel for NAME's kind of object."""
    if isinstance(obj, keras_tuner.HyperModel):
        return lambda shape, classes: obj
    if inspect.isclass(obj) and issubclass(obj, keras_tuner.HyperModel):
        def make(shape, classes):
            try:
                return obj(**_data_kwargs(obj, shape, classes))
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"--model {spec}: constructing {obj.__name__} raised {one_line(e)}") from None
        return make
    if callable(obj) and not inspect.isclass(obj):
        return lambda shape, classes: BuildFunction(obj, _data_kwargs(obj, shape, classes))
    raise ModelError(f"--model {spec}: {type(obj).__name__} is neither a build(hp) function nor a "
                     "keras_tuner.HyperModel; point NAME at one of those")


def _parameters(obj: Any) -> set[str]:
    try:
        return set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return set()


def _data_kwargs(obj: Any, input_shape: tuple, num_classes: int) -> dict:
    accepted = _parameters(obj)
    return {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes)) if k in accepted}


def _is_model_like(value: Any) -> bool:
    return isinstance(value, keras_tuner.HyperModel) or (inspect.isclass(value) and issubclass(
        value, keras_tuner.HyperModel)) or inspect.isfunction(value)


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj))
    except TypeError:
        return None


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _where(e: BaseException, path: Path) -> str:
    """' (line N of FILE)' for the innermost frame of the traceback in `path`."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" (line {frames[-1].lineno} of {path})" if frames else ""


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Make `precision` ("float32" or "mixed_bfloat16") Keras' global dtype policy meanwhile.

    Layers take the global policy when they are made, so a model built inside computes in
    that precision; layers given an explicit `dtype` (an output layer in float32) keep it.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build(hypermodel: keras_tuner.HyperModel, hp: keras_tuner.HyperParameters, precision: str = "float32"):
    """`hypermodel.build(hp)` under the dtype policy `precision`, its random layers seeded (`own_random_streams`)."""
    with dtype_policy(precision):
        model = hypermodel.build(hp)
    own_random_streams(model)
    return model


def own_random_streams(model) -> None:
    """Under PyTorch, Keras draws an unseeded random layer's noise (Dropout's mask, ...) from torch's one
    global generator, so a model's draws depend on every other model that draws meanwhile (the other
    members of fused folds). Each such layer's seed generator is given the seed it was built with (drawn
    after `keras.utils.set_random_seed`): its draws are then its own, the same for a fold trained alone
    or fused. Under TensorFlow and JAX Keras draws from the layer's seed generator already."""
    if keras.backend.backend() != "torch" or not isinstance(model, keras.Model):
        return
    for layer in model._flatten_layers():
        for generator in getattr(layer, "_seed_generators", ()):
            if generator._initial_seed is None:
                generator._initial_seed = int(keras.ops.convert_to_numpy(generator.state)[0])


def hyperparameters(values: dict) -> keras_tuner.HyperParameters:
    """HyperParameters that answer `values` to the builder's hp.Choice/Int/... calls."""
    hp = keras_tuner.HyperParameters()
    hp.values = dict(values)
    return hp


def error_location(e: BaseException, loaded: LoadedModel) -> str:
    """' (line N of FILE)' when the error came from the user's file, else ''."""
    return _where(e, Path(loaded.file)) if loaded.file else ""


__all__ = ["PRESETS", "BuildFunction", "LoadedModel", "Preset", "build", "dtype_policy", "hyperparameters", "load_model"]
