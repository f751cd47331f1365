"""The fused model: K fold models ("members") side by side, trained by one compiled step.

The contract (docs/concepts.md "Fused folds"; `tests/training/test_fused_contract.py` holds it, fold by fold, under
every backend): a member trains exactly as its sequential fold does. It shares the step with
the others and nothing else:

- its own loss: the member's own compiled loss (its loss weights), plus its own regularisation
  losses, in `loss` and in `val_loss`, through the member's own `compute_loss`;
- its own metrics and loss tracker: a member's logs are its own `get_metrics_result()`;
- its own optimizer (`MemberOptimizers`): its iterations, state, gradient clipping
  (`clipnorm`, `clipvalue`, `global_clipnorm` over its own gradients only) and schedule;
- its own random streams: each member is built after its sequential fold's seed, so its
  dropout and other seed generators draw what the fold's would;
- a member whose fold has no batch left in a step (folds one batch apart) is given a filler
  batch and a 0 in the step's `active` mask: its weights, statistics (BatchNorm), random
  streams, optimizer state and metrics come out of the step as they went in (a select), as if
  it had taken no step at all.

The gradient of the summed loss with respect to a member's weights is that member's own
gradient (the members share no weight), so one backward pass serves all of them.

What cannot keep this contract is not fused (`tuner_app.models.preflight.fused_blocker`).
"""

from __future__ import annotations

import keras
import numpy as np

from tuner_app.runtime import hardware


def member_name(k: int) -> str:
    return f"fold_{k}"


def input_name(k: int) -> str:
    return f"{member_name(k)}_input"


class MemberOptimizers(keras.optimizers.Optimizer):
    """Each member's own compiled optimizer, applied to that member's gradients only.

    One Keras optimizer over every member would share its iteration count, its
    `global_clipnorm` (one norm over all members' gradients) and its loss scale. Here each
    member's optimizer applies its own gradients, exactly as in its sequential fit; this
    optimizer only routes them. Its `variables` are the members' (in member order), so that
    JAX's stateless step, checkpoints and the fused-model cache see them all.

    Args:
        members: {k: the member model, compiled}.
    """

    def __init__(self, members: dict[int, keras.Model]):
        super().__init__(learning_rate=0.0, name="member_optimizers")
        object.__setattr__(self, "_members", [(k, m.optimizer) for k, m in members.items()])
        object.__setattr__(self, "_owner", {id(v): k for k, m in members.items() for v in m.trainable_variables})

    @property
    def optimizers(self) -> list:
        return [opt for _, opt in self._members]

    def build(self, variables):
        for k, opt in self._members:
            if not opt.built:
                opt.build([v for v in variables if self._owner.get(id(v)) == k])
        super().build(variables)

    @property
    def variables(self):
        return [*self._variables, *(v for opt in self.optimizers for v in opt.variables)]

    def owners(self) -> list[int | None]:
        """The member each of `variables` belongs to (None: this router's own)."""
        return [*[None] * len(self._variables), *(k for k, opt in self._members for _ in opt.variables)]

    def apply(self, grads, trainable_variables=None):
        variables = list(self._trainable_variables if trainable_variables is None else trainable_variables)
        if not self.built:
            self.build(variables)
        for k, opt in self._members:
            pairs = [(g, v) for g, v in zip(grads, variables) if self._owner.get(id(v)) == k]
            if pairs:
                opt.apply([g for g, _ in pairs], [v for _, v in pairs])
        self._iterations.assign_add(1)

    def scale_loss(self, loss):
        return loss  # no member's optimizer scales its loss (`fused_blocker`)

    @property
    def learning_rate(self):
        return self.optimizers[0].learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if not hasattr(self, "_members"):  # the base class's own __init__
            keras.optimizers.Optimizer.learning_rate.fset(self, value)
            return
        for opt in self.optimizers:  # a learning-rate callback sets every member's, as it would alone
            opt.learning_rate = value

    def finalize_variable_values(self, var_list):
        for k, opt in self._members:
            opt.finalize_variable_values([v for v in var_list if self._owner.get(id(v)) == k])

    def get_config(self):
        return {"name": self.name}


class FusedFolds(keras.Model):
    """A functional model with an input `fold_<k>_input` and an output `fold_<k>` per member (see the
    module's contract). Its step's data is `(x, y)` or, when the folds have different batch counts,
    `(x, y, active)`: `active[i]` is 1 where the i-th member has a batch in this step."""

    folds: tuple[int, ...]

    def setup(self, members: dict[int, keras.Model]) -> None:
        object.__setattr__(self, "folds", tuple(members))  # past Keras' tracking: the members are its layers
        object.__setattr__(self, "_member_models", dict(members))

    def member(self, k: int) -> keras.Model:
        return self._member_models[k]

    # The members' losses and metrics, each its own

    def member_loss(self, k: int, y, y_pred, training: bool):
        """Member k's loss as its own `compute_loss` gives it (compiled loss with its weights, plus its
        regularisation losses), added to its own loss tracker as its own train or test step would."""
        member = self.member(k)
        if self._losses_override:  # JAX: this step's forward-pass losses, collected by Keras for the whole
            owned = [loss for loss in self._losses_override if self._is_members(k, loss)]
            member._losses_override = owned + member._get_regularization_losses()
        try:
            loss = member._compute_loss(y=y, y_pred=y_pred, training=training)
        finally:
            member._losses_override = []
        member._loss_tracker.update_state(loss, sample_weight=keras.ops.shape(y)[0])
        return loss

    def _is_members(self, k: int, loss) -> bool:
        return any(id(loss) in layer._loss_ids for layer in self.member(k)._flatten_layers())

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = [self.member_loss(k, y[member_name(k)], y_pred[member_name(k)], training) for k in self.folds]
        return losses[0] if len(losses) == 1 else keras.ops.sum(keras.ops.stack(losses))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for k in self.folds:
            compiled = self.member(k)._compile_metrics
            if compiled is not None:
                compiled.update_state(y[member_name(k)], y_pred[member_name(k)])
        return self.get_metrics_result()

    @property
    def metrics(self):
        found = [self._loss_tracker] if getattr(self, "_loss_tracker", None) is not None else []
        for k in getattr(self, "folds", ()):
            found.extend(self.member_metrics(k))
        return found

    def member_metrics(self, k: int) -> list:
        member = self.member(k)
        return [m for m in (member._loss_tracker, member._compile_metrics) if m is not None]

    def get_metrics_result(self):
        logs = {}
        for k in self.folds:
            for metric in self.member_metrics(k):
                result = metric.result()
                found = result if isinstance(result, dict) else {metric.name: result}
                logs.update({f"{member_name(k)}_{name}": value for name, value in found.items()})
        return logs

    def _symbolic_build(self, iterator=None, data_batch=None):
        if data_batch is None:
            for _, _, data in iterator:
                data_batch = data[0] if isinstance(data, (list, tuple)) else next(data)
                break
        x, y = data_batch[0], data_batch[1]
        for k in self.folds:  # each member's compiled loss, metrics and optimizer, as its own fit builds them
            self.member(k)._symbolic_build(data_batch=(x[input_name(k)], y[member_name(k)]))
        super()._symbolic_build(data_batch=(x, y))

    # Members without a batch take no step

    def _owners(self, groups) -> list[list[int | None]]:
        """For each variable group of a step's state, the member each variable belongs to (or None)."""
        owner = {}
        for k in self.folds:
            member = self.member(k)
            for v in [*member.variables, *member.optimizer.variables,
                      *(v for m in self.member_metrics(k) for v in m.variables)]:
                owner[id(v)] = k
        return [[owner.get(id(v)) for v in group] for group in groups]

    def _keep_idle(self, active, new: list, old: list, owners: list) -> list:
        """`new` where the variable's member took this step, else `old` (what it had before the step)."""
        index = {k: i for i, k in enumerate(self.folds)}
        return [n if k is None else keras.ops.where(active[index[k]] > 0, n, o) for n, o, k in zip(new, old, owners)]

    def _stateful_step(self, step, data, groups):
        """TensorFlow and PyTorch: `step(x, y)` on the variables in place, then idle members' put back."""
        x, y, active = data
        if not self.optimizer.built:  # (a model that runs eagerly builds on its first step)
            self._symbolic_build(data_batch=(x, y))
            groups = self._train_groups() if len(groups) == 4 else self._test_groups()
        groups = [list(g) for g in groups]
        owners = self._owners(groups)
        old = [[keras.ops.copy(v.value) for v in g] for g in groups]
        step((x, y))
        for group, before, owner in zip(groups, old, owners):
            kept = self._keep_idle(active, [v.value for v in group], before, owner)
            for v, value in zip(group, kept):
                v.assign(value)
        return self.get_metrics_result()

    def _stateless_step(self, step, state, data):
        """JAX: `step(state, (x, y))`, then idle members' part of the new state replaced by the old."""
        from keras.src import backend

        x, y, active = data
        groups = self._train_groups() if len(state) == 4 else self._test_groups()
        _, new = step(state, (x, y))
        new = tuple(self._keep_idle(active, list(n), list(o), owner)
                    for n, o, owner in zip(new, state, self._owners(groups)))
        with backend.StatelessScope(state_mapping=list(zip(self.metrics_variables, new[-1]))):
            logs = self.get_metrics_result()
        return logs, new

    def _train_groups(self):
        return (self.trainable_variables, self.non_trainable_variables, self.optimizer.variables,
                self.metrics_variables)

    def _test_groups(self):
        return self.trainable_variables, self.non_trainable_variables, self.metrics_variables

    def train_step(self, *args):
        return self._masked(self._train_step, args, self._train_groups)

    def test_step(self, *args):
        return self._masked(super().test_step, args, self._test_groups)

    def _train_step(self, *args):
        return super().train_step(*args)

    def _masked(self, step, args, groups):
        data = args[-1]
        if not (isinstance(data, (list, tuple)) and len(data) == 3):
            return step(*args)
        if keras.backend.backend() == "jax":
            return self._stateless_step(step, args[0], data)
        return self._stateful_step(step, data, groups())


class MemberByMember(FusedFolds):
    """The fused model under TensorFlow on a CPU, its training step one member after another.

    Keras' own step runs every member's forward pass, then one backward pass through all of
    them, so a step holds K members' activations at once: peak RSS 1.26x the sequential
    path's on `medium` (Intel CPU). Here member k's forward and backward pass come first,
    and member k+1's starts only once k's gradients exist (a control dependency), so a step
    holds one member's activations; then one `MemberOptimizers` update applies every member's
    gradients. Each member's loss, gradient and metrics are those of `FusedFolds`.
    """

    def _train_step(self, data):
        import tensorflow as tf

        x, y = data
        y_pred, gradients, after = {}, {}, []
        for k in self.folds:
            name, member = member_name(k), self.member(k)
            with tf.control_dependencies(after):
                member_x = tf.identity(x[input_name(k)])
            with tf.GradientTape() as tape:
                y_pred[name] = member(member_x, training=True)
                loss = self.member_loss(k, y[name], y_pred[name], training=True)
            variables = member.trainable_variables
            found = tape.gradient(loss, variables)
            gradients.update({id(v): g for v, g in zip(variables, found)})
            after = [g.op for g in found if g is not None]
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip([gradients[id(w)] for w in weights], weights))
        return self.compute_metrics(x, y, y_pred)


def fuse(members: dict[int, keras.Model], input_shape: tuple, serial: bool | None = None) -> FusedFolds:
    """One compiled fused model of `members` (each compiled, as the sequential path builds it).

    Args:
        serial: Step one member after another (`MemberByMember`); None: under TensorFlow on a CPU.
    """
    inputs, outputs = {}, {}
    for k, member in members.items():
        member.name = member_name(k)
        inputs[input_name(k)] = keras.Input(shape=tuple(input_shape), name=input_name(k))
        outputs[member_name(k)] = member(inputs[input_name(k)])
    if serial is None:
        serial = keras.backend.backend() == "tensorflow" and not hardware._gpus("tensorflow")
    fused = (MemberByMember if serial else FusedFolds)(inputs, outputs, name="fused_folds")
    fused.setup(members)
    first = next(iter(members.values()))
    fused.compile(optimizer=MemberOptimizers(members), run_eagerly=first.run_eagerly, jit_compile=first.jit_compile)
    return fused


def member_logs(logs: dict, k: int) -> dict:
    """Member k's epoch logs under the names its own fit gives (`loss`, `accuracy`, `val_loss`, ...)."""
    prefix, found = f"{member_name(k)}_", {}
    for key, value in logs.items():
        val = key.startswith("val_")
        name = key[4:] if val else key
        if name.startswith(prefix):
            found[("val_" if val else "") + name[len(prefix):]] = float(np.asarray(value))
    return found


__all__ = ["FusedFolds", "MemberByMember", "MemberOptimizers", "fuse", "input_name", "member_logs", "member_name"]
