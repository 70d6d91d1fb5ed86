"""SAM step for the PyTorch backend (eager, stateful)."""

import keras
import torch

from keras_sam import stateless
from keras_sam.backend import common


def value_and_grad(fn):
    """`jax.value_and_grad(fn, has_aux=True)` with `torch.autograd.grad`."""

    def wrapped(trainable_values, *args):
        leaves = [
            t.detach().requires_grad_(True) for t in trainable_values
        ]
        value, aux = fn(leaves, *args)
        gradients = torch.autograd.grad(value, leaves, allow_unused=True)
        gradients = [
            torch.zeros_like(leaf) if g is None else g
            for g, leaf in zip(gradients, leaves)
        ]
        aux = keras.tree.map_structure(_detach, aux)
        return (value.detach(), aux), gradients

    return wrapped


def grad(fn):
    """`(trainable, *args) -> gradients` of the scalar `fn`."""

    def wrapped(trainable, *args):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in trainable]
            value = fn(leaves, *args)
            gradients = torch.autograd.grad(value, leaves, allow_unused=True)
        return _filled(gradients, leaves)

    return wrapped


def hessian_vector_product(fn):
    """`(trainable, vector, *args) -> H v` of the scalar `fn` (double
    backpropagation)."""

    def hvp(trainable, vector, *args):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in trainable]
            value = fn(leaves, *args)
            grads = torch.autograd.grad(
                value, leaves, create_graph=True, allow_unused=True
            )
            terms = [
                (g * v).sum() for g, v in zip(grads, vector) if g is not None
            ]
            if not terms or not any(t.requires_grad for t in terms):
                return [torch.zeros_like(p) for p in leaves]
            products = torch.autograd.grad(
                sum(terms), leaves, allow_unused=True
            )
        return _filled(products, leaves)

    return hvp


def compile_function(fn):
    """Eager: returns `fn` run without building a graph for autograd where
    it is not differentiated."""

    def no_grad(*args):
        with torch.no_grad():
            return fn(*args)

    return no_grad


def _filled(tensors, like):
    return [
        torch.zeros_like(p) if t is None else t.detach()
        for t, p in zip(tensors, like)
    ]


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


class ForeachAscent:
    """`keras_sam.ascent`'s `global_norm` and `perturbed_weights` on
    torch's multi-tensor (`torch._foreach_*`) kernels.

    Keras's torch backend runs eagerly, where each `keras.ops` call costs
    tens of microseconds of Python: per-variable ascent maths added about
    8 ms to a host-bound WRN-16-8 step on an H100. Same maths and float32
    accumulation as the `keras.ops` version (tested against it).
    """

    @staticmethod
    def global_norm(tensors):
        norms = torch._foreach_norm(_as_float32(tensors))
        return torch.linalg.vector_norm(torch.stack(norms))

    @staticmethod
    def perturbed_weights(
        gradients, weights, rho, adaptive=False, eta=0.01, gradient_norm=None
    ):
        gradients = _as_float32(gradients)
        if adaptive:
            scales = torch._foreach_abs(_as_float32(weights))
            torch._foreach_add_(scales, eta)
            scaled = torch._foreach_mul(gradients, scales)
            directions = torch._foreach_mul(scaled, scales)
            normalizer = ForeachAscent.global_norm(scaled)
        else:
            directions = gradients
            normalizer = gradient_norm
            if normalizer is None:
                normalizer = ForeachAscent.global_norm(gradients)
        usable = torch.isfinite(normalizer) & (normalizer > 0)
        factor = torch.where(usable, rho / normalizer, 0.0)
        eps = torch._foreach_mul(directions, factor)
        # A non-finite gradient entry times a zero factor is NaN: zero it.
        eps = [torch.where(usable, e, 0.0).to(w.dtype)
               for e, w in zip(eps, weights)]
        return torch._foreach_add(weights, eps)


def _as_float32(tensors):
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


class _TorchGlobalRNG:
    """Torch's global generators, which unseeded Keras dropout uses."""

    @staticmethod
    def get_state():
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() \
            else None
        return torch.get_rng_state(), cuda

    @staticmethod
    def set_state(state):
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class SAMTrainer:
    """The SAM `train_step` on torch (eager, stateful).

    Unseeded dropout draws from torch's global generators: the perturbed
    pass replays the clean pass's draws, so both see the same mask.
    """

    def train_step(self, data):
        x, y, sample_weight = common.unpack(self, data)
        variables = stateless.variable_lists(self)
        trainable = [v.value for v in variables[0]]
        scale_loss = self.optimizer.scale_loss
        unit = common.loss_scale(scale_loss)
        step = self.optimizer.iterations
        rho = common.current_rho(self, step)
        first_point = common.first_pass_point(
            self, trainable, rho, common.momentum_values(self)
        )
        # On the whole batch, or accumulated over its chunks when they
        # share one perturbation (`split_perturbation="shared"`).
        loss_and_grads = common.split_gradients(
            self, value_and_grad(common.scaled_loss(self, scale_loss,
                                                    variables)),
            variables[1],
        )

        def sam_pass(non_trainable, metrics, batch):
            rng_before = _TorchGlobalRNG.get_state()
            # 1. Clean pass at w: L(w) and g; its state updates are kept.
            # (MomentumSAM's only pass: at w moved along the momentum.)
            (_, clean), gradients = loss_and_grads(
                first_point, non_trainable, metrics, *batch
            )
            norm = ForeachAscent.global_norm(gradients)
            state = common.rule_state_values(self, variables[1], non_trainable)

            def with_ascent(state):
                # 2. Ascent: w + eps, eps = rho g / ||g|| (or the rule's).
                perturbed, state = common.ascend(
                    self, gradients, trainable, rho, state, 1.0 / unit, norm,
                    ForeachAscent,
                )
                # 3. Perturbed pass at w + eps (on the samples the rule
                # selects: all but for ESAM), from the pre-step state and
                # the same dropout draws; its state updates are discarded.
                rng_after = _TorchGlobalRNG.get_state()
                _TorchGlobalRNG.set_state(rng_before)
                (_, at_perturbed), perturbed_gradients = loss_and_grads(
                    perturbed, non_trainable, metrics,
                    *common.descent_batch(self, perturbed, non_trainable,
                                          metrics, batch, clean, variables),
                )
                _TorchGlobalRNG.set_state(rng_after)
                # The gradient to apply: g_p for SAM, the rule's otherwise.
                applied, state = self.variant.descent(
                    gradients, perturbed_gradients, state
                )
                return applied, at_perturbed[0] - clean[0], state

            # Steps 2-3 where the rule ascends (every step for SAM);
            # else its one-pass step.
            applied, sharpness, ascended, state = common.maybe_ascend(
                self, step, state, gradients, norm / unit, with_ascent
            )
            return common.pass_result(
                applied, clean, sharpness, norm / unit,
                common.with_rule_state(self, variables[1], clean[2], state),
                ascended,
            )

        result = common.over_chunks(
            sam_pass, common.perturbation_splits(self), variables[1],
            [v.value for v in variables[1]], [v.value for v in variables[2]],
            (x, y, sample_weight),
        )
        result = common.per_batch_scalars(
            result, 1, self.perturbation == "global"
        )
        with torch.no_grad():
            # 4. Descent: the optimizer applies the perturbed gradient at w.
            self.optimizer.apply(result["gradients"], variables[0])
            common.assign(variables[1], result["non_trainable"])
            common.assign(variables[2], result["metrics"])
            return common.update_metrics(
                self, x, y, sample_weight, result, rho
            )

    def test_step(self, data):
        return common.without_sam_logs(keras.Model.test_step(self, data))
