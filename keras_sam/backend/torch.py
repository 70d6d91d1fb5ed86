"""SAM step for the PyTorch backend (eager, stateful)."""

import keras
import torch

from keras_sam import stateless
from keras_sam.backend.trainer import SAMTrainerBase, assign, without_sam_logs


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


def linearize(fn):
    """`(trainable, vector, *args) -> (outputs, J v, vjp)` of the tensor
    `fn(trainable, *args)`: its value, its Jacobian times `vector` (the
    derivative of `J^T r` along `vector`, by double backpropagation) and
    `vjp(cotangent) -> J^T cotangent`, all from one forward pass."""

    def run(trainable, vector, *args):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in trainable]
            outputs = fn(leaves, *args)
            dummy = torch.zeros_like(outputs, requires_grad=True)
            pulled = torch.autograd.grad(
                outputs, leaves, grad_outputs=dummy, create_graph=True,
                allow_unused=True,
            )
            terms = [
                (g * v).sum() for g, v in zip(pulled, vector) if g is not None
            ]
            tangent = None
            if terms and any(t.requires_grad for t in terms):
                (tangent,) = torch.autograd.grad(
                    sum(terms), dummy, retain_graph=True, allow_unused=True
                )
            if tangent is None:
                tangent = torch.zeros_like(outputs)

        def vjp(cotangent):
            with torch.enable_grad():
                pulled = torch.autograd.grad(
                    outputs, leaves, grad_outputs=cotangent,
                    retain_graph=True, allow_unused=True,
                )
            return _filled(pulled, leaves)

        return outputs.detach(), tangent.detach(), vjp

    return run


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


def foreach_global_norm(tensors):
    """`keras_sam.ascent.global_norm` on torch's multi-tensor
    (`torch._foreach_*`) kernels: same maths, float32 accumulation (tested
    against the `keras.ops` version)."""
    norms = torch._foreach_norm(_as_float32(tensors))
    return torch.linalg.vector_norm(torch.stack(norms))


def foreach_perturbed_weights(
    gradients, weights, rho, adaptive=False, eta=0.01, gradient_norm=None
):
    """`keras_sam.ascent.perturbed_weights` on torch's multi-tensor
    kernels (arguments as there)."""
    gradients = _as_float32(gradients)
    if adaptive:
        scales = torch._foreach_abs(_as_float32(weights))
        torch._foreach_add_(scales, eta)
        scaled = torch._foreach_mul(gradients, scales)
        directions = torch._foreach_mul(scaled, scales)
        normalizer = foreach_global_norm(scaled)
    else:
        directions = gradients
        normalizer = gradient_norm
        if normalizer is None:
            normalizer = foreach_global_norm(gradients)
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


class SAMTrainer(SAMTrainerBase):
    """The SAM `train_step` on torch (eager, stateful).

    Unseeded dropout draws from torch's global generators: the perturbed
    pass replays the clean pass's draws, so both see the same mask.
    """

    _value_and_grad = staticmethod(value_and_grad)

    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        variables = stateless.variable_lists(self)
        step = self._step(
            self.optimizer.iterations, variables,
            [v.value for v in variables.trainable],
        )
        splits = self._splits(
            self._perturbation_splits(), step,
            [v.value for v in variables.non_trainable],
            [v.value for v in variables.metrics], (x, y, sample_weight),
        )
        for chunk in splits:  # the whole batch, or each m-sharpness chunk
            self._draws_before_clean_pass = _TorchGlobalRNG.get_state()
            # 1. Clean pass at w: L(w) and g; its state updates are kept.
            # (MomentumSAM's only pass: at w moved along the momentum.)
            clean = self._pass(self._first_point(step), chunk, step)
            # 2-3. Where the rule ascends (every step for SAM): the ascent
            # to w + eps and the perturbed pass there (`_ascend`), with the
            # clean pass's dropout draws; else the rule's one-pass step.
            splits.add(
                self._sam_or_plain_step(clean, clean.gradients, chunk, step)
            )
        result = self._per_batch_scalars(splits.result())
        with torch.no_grad():
            # 4. Descent: the optimizer applies the chosen gradient at w.
            self.optimizer.apply(result.gradients, variables.trainable)
            assign(variables.non_trainable, result.non_trainable)
            assign(variables.metrics, result.metrics)
            return self._update_sam_metrics(
                x, y, sample_weight, result, step.rho
            )

    def _perturbed_pass(self, point, chunk, clean, step):
        # Replays the clean pass's draws of torch's global generators.
        draws_after = _TorchGlobalRNG.get_state()
        _TorchGlobalRNG.set_state(self._draws_before_clean_pass)
        perturbed = super()._perturbed_pass(point, chunk, clean, step)
        _TorchGlobalRNG.set_state(draws_after)
        return perturbed

    def test_step(self, data):
        return without_sam_logs(keras.Model.test_step(self, data))
