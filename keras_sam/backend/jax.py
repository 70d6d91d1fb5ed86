"""SAM step for the JAX backend: stateless, `train_step(state, data)`.

Under `keras.distribution.DataParallel` the step is one SPMD program and
the gradients are already global, so `eps` is computed from the whole
batch's gradient whatever `perturbation` says (`"global"` semantics).
"""

import jax
import jax.numpy as jnp
import keras
from keras import ops

from keras_sam import ascent, stateless
from keras_sam.backend import common


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


class SAMTrainer:
    """The SAM `train_step` on JAX: takes and returns the whole state."""

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_values, metrics = state
        x, y, sample_weight = common.unpack(self, data)
        optimizer = self.optimizer
        variables = stateless.variable_lists(self)

        def with_optimizer_state(fn):
            mapping = list(zip(optimizer.variables, optimizer_values))
            with keras.StatelessScope(state_mapping=mapping):
                return fn()

        def scale_loss(loss):
            return with_optimizer_state(lambda: optimizer.scale_loss(loss))

        unit = common.loss_scale(scale_loss)
        step = with_optimizer_state(
            lambda: ops.convert_to_tensor(optimizer.iterations)
        )
        rho = common.current_rho(self, step)
        first_point = common.first_pass_point(
            self, trainable, rho,
            common.momentum_values(self, optimizer_values),
        )
        # On the whole batch, or accumulated over its chunks when they
        # share one perturbation (`split_perturbation="shared"`).
        loss_and_grads = common.split_gradients(
            self, value_and_grad(common.scaled_loss(self, scale_loss,
                                                    variables)),
            variables[1],
        )

        def sam_pass(non_trainable, metrics, batch):
            # 1. Clean pass at w: L(w) and g; its state updates are kept.
            # (MomentumSAM's only pass: at w moved along the momentum.)
            (_, clean), gradients = loss_and_grads(
                first_point, non_trainable, metrics, *batch
            )
            norm = ascent.global_norm(gradients)
            state = common.rule_state_values(self, variables[1], non_trainable)

            def with_ascent(state):
                # 2. Ascent: w + eps, eps = rho g / ||g|| (or the rule's).
                perturbed, state = common.ascend(
                    self, gradients, trainable, rho, state, 1.0 / unit, norm,
                    ascent,
                )
                # 3. Perturbed pass at w + eps (on the samples the rule
                # selects: all but for ESAM), from the pre-step state; its
                # state updates are discarded.
                (_, at_perturbed), perturbed_gradients = loss_and_grads(
                    perturbed, non_trainable, metrics,
                    *common.descent_batch(self, perturbed, non_trainable,
                                          metrics, batch, clean, variables),
                )
                # The gradient to apply: g_p for SAM, the rule's otherwise.
                applied, state = self.variant.descent(
                    gradients, perturbed_gradients, state
                )
                return applied, at_perturbed[0] - clean[0], state

            # Steps 2-3 where the rule ascends (every step for SAM),
            # decided inside the compiled step; else its one-pass step.
            applied, sharpness, ascended, state = common.maybe_ascend(
                self, step, state, gradients, norm / unit, with_ascent, cond
            )
            return common.pass_result(
                applied, clean, sharpness, norm / unit,
                common.with_rule_state(self, variables[1], clean[2], state),
                ascended,
            )

        result = common.over_chunks(
            sam_pass, common.perturbation_splits(self), variables[1],
            non_trainable, metrics, (x, y, sample_weight),
        )
        result = common.per_batch_scalars(
            result, 1, self.perturbation == "global"
        )
        # 4. Descent: the optimizer applies the perturbed gradient at w.
        trainable, optimizer_values = optimizer.stateless_apply(
            optimizer_values, result["gradients"], trainable
        )
        logs, metrics = self._stateless_update_metrics(
            result["metrics"], x, y, sample_weight, result, rho
        )
        state = (trainable, result["non_trainable"], optimizer_values, metrics)
        return logs, state

    def _stateless_update_metrics(self, metrics, x, y, sample_weight, result,
                                  rho):
        mapping = list(zip(self.metrics_variables, metrics))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = common.update_metrics(
                self, x, y, sample_weight, result, rho
            )
        new_metrics = []
        for variable in self.metrics_variables:
            value = scope.get_current_value(variable)
            new_metrics.append(variable.value if value is None else value)
        return logs, new_metrics

    def test_step(self, state, data):
        logs, state = keras.Model.test_step(self, state, data)
        return common.without_sam_logs(logs), state
