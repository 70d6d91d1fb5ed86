"""SAM step for the PyTorch backend (eager, stateful)."""

import keras
import torch

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


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


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


def train_step(model, data):
    x, y, sample_weight = common.unpack(model, data)
    result = model.sam_gradients(
        value_and_grad,
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.metrics_variables],
        x,
        y,
        sample_weight,
        scale_loss=model.optimizer.scale_loss,
        global_rng=_TorchGlobalRNG,
    )
    with torch.no_grad():
        model.optimizer.apply(result["gradients"], model.trainable_variables)
        common.assign(model.non_trainable_variables, result["non_trainable"])
        common.assign(model.metrics_variables, result["metrics"])
        return model.update_sam_metrics(x, y, sample_weight, result)


def test_step(model, data):
    return common.without_sam_logs(keras.Model.test_step(model, data))
