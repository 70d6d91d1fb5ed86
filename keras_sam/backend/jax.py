"""SAM step for the JAX backend: stateless, `train_step(state, data)`.

Under `keras.distribution.DataParallel` the step is one SPMD program
whose gradients are global: `perturbation="global"` takes `eps` from the
whole batch's gradient. With `perturbation="replica"` (the default) steps
1-3 run on each device's shard of the batch, each device's `eps` from its
own gradient (`keras_sam.backend.jax_sharding`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras
from keras import ops

from keras_sam import rules, stateless
from keras_sam.backend import jax_sharding
from keras_sam.backend.trainer import SAMTrainerBase, without_sam_logs


def value_and_grad(fn):
    """`jax.value_and_grad(fn, has_aux=True)`: `(trainable, *args) ->
    ((value, aux), gradients)`."""
    return jax.value_and_grad(fn, has_aux=True)


def grad(fn):
    """`(trainable, *args) -> gradients` of the scalar `fn`."""
    return jax.grad(fn)


def hessian_vector_product(fn):
    """`(trainable, vector, *args) -> H v` of the scalar `fn`
    (forward-over-reverse)."""
    gradient = jax.grad(fn)

    def hvp(trainable, vector, *args):
        return jax.jvp(lambda t: gradient(t, *args), (trainable,), (vector,))[1]

    return hvp


def linearize(fn):
    """`(trainable, vector, *args) -> (outputs, J v, vjp)` of the tensor
    `fn(trainable, *args)`: its value, its Jacobian times `vector`
    (forward mode) and `vjp(cotangent) -> J^T cotangent`."""

    def run(trainable, vector, *args):
        def of_trainable(t):
            return fn(t, *args)

        outputs, tangent = jax.jvp(of_trainable, (trainable,), (vector,))
        _, pullback = jax.vjp(of_trainable, trainable)
        return outputs, tangent, lambda cotangent: pullback(cotangent)[0]

    return run


def compile_function(fn):
    return jax.jit(fn)


def cond(pred, true_fn, false_fn):
    """`jax.lax.cond`, except on XLA:CPU, where both branches run and the
    result is selected.

    XLA:CPU leaves the backward convolutions inside a conditional's branch in
    their non-canonical form (kernel `01oi`, batch as feature), so they
    run as plain loops instead of the optimized convolution: a gradient
    step inside a branch ran 30-40x slower than outside one (jax 0.10.2,
    `benchmarks/jax_cond_cpu.py`; a `lax.while_loop` body the same). A
    skipped ascent then saves nothing and a taken one costs tens of plain
    steps. Selecting costs the ascending branch on every step, as SAM
    does; on GPU and TPU only the taken branch runs. The two give the same
    values.
    """

    def select():
        taken, skipped = true_fn(), false_fn()
        return jax.tree.map(
            lambda a, b: jnp.where(pred, a, b), taken, skipped
        )

    return jax.lax.platform_dependent(
        cpu=select, default=lambda: jax.lax.cond(pred, true_fn, false_fn)
    )


class SAMTrainer(SAMTrainerBase):
    """The SAM `train_step` on JAX: takes and returns the whole state."""

    _value_and_grad = staticmethod(value_and_grad)

    def _cond(self, pred, true_fn, false_fn):
        return cond(pred, true_fn, false_fn)

    # The decision on the host (XLA:CPU) ---------------------------------

    def make_train_function(self, force=False):
        """Keras's train function, except where the rule skips the ascent
        on some steps and decides from the step counter and its state
        (LookSAM, RandomizedSAM, LateSAM) on XLA:CPU: there two steps are
        compiled, with and without the ascent, and the host picks one
        before each step (`_decides_on_host`), so a skipped ascent costs
        one pass where `cond` computes both branches. The same values:
        the in-graph decision selects the branch the host picks."""
        if not self._decides_on_host():
            return super().make_train_function(force=force)
        if self.train_function is not None and not force:
            return
        steps = {decision: self._step_with_decision(decision)
                 for decision in (True, False)}

        def train_step(state, data):
            return steps[self._host_decision_for(state)](state, data)

        self.train_function = self._make_function(train_step)

    def _decides_on_host(self):
        """Whether the ascent is chosen on the host: on XLA:CPU, compiled,
        without a `keras.distribution`, for a rule whose decision is a
        tensor that does not read the step's gradient (`observe`)."""
        if (jax.default_backend() != "cpu" or self.run_eagerly
                or not self.jit_compile
                or keras.distribution.distribution() is not None
                or type(self.rule).observe is not rules.Rule.observe):
            return False
        decision = self._decision(
            _HostStep(ops.convert_to_tensor(self.optimizer.iterations)),
            [v.value for v in self.rule_state.variables],
        )
        return not isinstance(decision, bool)

    def _host_decision_for(self, state):
        """The rule's decision for the step that `state` starts, on the
        host."""
        _, non_trainable, optimizer_values, _ = state
        # As the step reads it (with gradient accumulation, `iterations`
        # is computed from the optimizer's counter, not a variable).
        iterations = self._iterations(optimizer_values)
        rule_state = [
            non_trainable[_index_of(self.non_trainable_variables, v)]
            for v in self.rule_state.variables
        ]
        return bool(self._decision(_HostStep(iterations), rule_state))

    def _step_with_decision(self, decision):
        """`train_step` compiled with the ascent made (`True`) or not."""

        def train_step(state, data):
            self._host_decision = decision
            try:
                return self.train_step(state, data)
            finally:
                self._host_decision = None

        return jax.jit(train_step, donate_argnums=0)

    def _decision(self, step, state):
        decision = super()._decision(step, state)
        host_decision = getattr(self, "_host_decision", None)
        if host_decision is None or isinstance(decision, bool):
            return decision
        return host_decision

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_values, metrics = state
        x, y, sample_weight = self._unpack(data)
        step = self._step(
            self._iterations(optimizer_values), stateless.variable_lists(self),
            trainable, optimizer_values=optimizer_values,
        )

        def steps_1_to_3(step, non_trainable, metrics, batch):
            splits = self._splits(
                self._perturbation_splits(), step, non_trainable, metrics,
                batch,
            )
            for chunk in splits:  # the whole batch, or each m-sharpness chunk
                # 1. Clean pass at w: L(w) and g; its state updates are kept.
                # (MomentumSAM's only pass: at w moved along the momentum.)
                clean = self._pass(self._first_point(step), chunk, step)
                # 2-3. Where the rule ascends (every step for SAM): the
                # ascent to w + eps and the perturbed pass there
                # (`_ascend`); else the rule's one-pass step.
                splits.add(
                    self._sam_or_plain_step(clean, clean.gradients, chunk,
                                            step)
                )
            return splits.result()

        # On the whole batch; with perturbation="replica" under
        # DataParallel, on each device's shard (its own eps), merged by one
        # gradient all-reduce (`_per_device`).
        result = self._per_device(steps_1_to_3)(
            step, non_trainable, metrics, (x, y, sample_weight)
        )
        result = self._per_batch_scalars(result)
        # 4. Descent: the optimizer applies the chosen gradient at w.
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, result.gradients, trainable
        )
        logs, metrics = self._stateless_update_metrics(
            result.metrics, x, y, sample_weight, result, step.rho
        )
        state = (trainable, result.non_trainable, optimizer_values, metrics)
        return logs, state

    def _per_device(self, fn):
        """`fn` (steps 1-3 on a batch), or, with `perturbation="replica"`
        under a `DataParallel` over several devices, `fn` on each device's
        shard with the results merged (`jax_sharding.PerDevice`)."""
        placement = jax_sharding.per_device_mesh(self)
        if placement is None:
            return fn
        mesh, axis = placement
        is_float = [
            "float" in str(v.dtype) for v in self.non_trainable_variables
        ]
        return jax_sharding.PerDevice(fn, mesh, axis, is_float)

    def _iterations(self, optimizer_values):
        """The optimizer's step counter, read from its values."""
        mapping = list(zip(self.optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            return ops.convert_to_tensor(self.optimizer.iterations)

    def _stateless_update_metrics(self, metrics, x, y, sample_weight, result,
                                  rho):
        mapping = list(zip(self.metrics_variables, metrics))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._update_sam_metrics(x, y, sample_weight, result, rho)
        new_metrics = []
        for variable in self.metrics_variables:
            value = scope.get_current_value(variable)
            new_metrics.append(variable.value if value is None else value)
        return logs, new_metrics

    def test_step(self, state, data):
        logs, state = keras.Model.test_step(self, state, data)
        return without_sam_logs(logs), state


class _HostStep(NamedTuple):
    """The part of a `Step` a rule's decision reads."""

    iterations: object


def _index_of(variables, variable):
    return next(i for i, v in enumerate(variables) if v is variable)
