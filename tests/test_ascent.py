"""The ascent step (`keras_sam.ascent`: its `keras.ops` maths, and on
torch the multi-tensor kernels it dispatches to) against NumPy float64."""

import types

import keras
import numpy as np
import pytest
import sam_reference as ref

from keras_sam import ascent as perturbation

pytestmark = pytest.mark.multi_backend


def _ops_perturbed_weights(gradients, weights, rho, **kwargs):
    eps = perturbation.sam_perturbation(gradients, weights, rho, **kwargs)
    return [w + e for w, e in zip(weights, eps)]


# The `keras.ops` maths on every backend; on torch, `keras_sam.ascent`'s
# public functions run the `torch._foreach_*` kernels instead.
OPS = types.SimpleNamespace(
    global_norm=perturbation._global_norm,
    perturbed_weights=_ops_perturbed_weights,
)
ASCENTS = [pytest.param(OPS, id="keras_ops")]
if keras.backend.backend() == "torch":
    ASCENTS.append(pytest.param(perturbation, id="torch_foreach"))


def _tensors(rng, shapes=((3, 4), (4,), (2, 2, 3))):
    return [rng.standard_normal(shape).astype("float32") for shape in shapes]


def _numpy_perturbed(gradients, weights, rho, adaptive, eta):
    g = [x.astype("float64") for x in gradients]
    w = [x.astype("float64") for x in weights]
    eps = ref.epsilon(w, g, rho, adaptive=adaptive, eta=eta)
    return [wi + e for wi, e in zip(w, eps)]


def _run(ascent, gradients, weights, **kwargs):
    tensors = [keras.ops.convert_to_tensor(x) for x in gradients]
    values = [keras.ops.convert_to_tensor(x) for x in weights]
    perturbed = ascent.perturbed_weights(tensors, values, **kwargs)
    return [keras.ops.convert_to_numpy(x) for x in perturbed]


@pytest.mark.parametrize("ascent", ASCENTS)
def test_global_norm(ascent):
    gradients = _tensors(np.random.default_rng(0))
    expected = np.sqrt(sum(np.sum(g.astype("float64") ** 2) for g in gradients))
    tensors = [keras.ops.convert_to_tensor(g) for g in gradients]
    norm = ascent.global_norm(tensors)
    assert float(keras.ops.convert_to_numpy(norm)) == pytest.approx(
        expected, rel=1e-6
    )


@pytest.mark.parametrize("ascent", ASCENTS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbed_weights_match_numpy(ascent, adaptive):
    rng = np.random.default_rng(1)
    gradients, weights = _tensors(rng), _tensors(rng)
    got = _run(ascent, gradients, weights, rho=0.3, adaptive=adaptive, eta=0.1)
    expected = _numpy_perturbed(gradients, weights, 0.3, adaptive, 0.1)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ascent", ASCENTS)
def test_given_gradient_norm_is_used(ascent):
    rng = np.random.default_rng(2)
    gradients, weights = _tensors(rng), _tensors(rng)
    norm = keras.ops.convert_to_tensor(np.float32(2.0))
    got = _run(ascent, gradients, weights, rho=0.5, gradient_norm=norm)
    for g, w, x in zip(gradients, weights, got):
        np.testing.assert_allclose(x, w + 0.25 * g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ascent", ASCENTS)
@pytest.mark.parametrize("bad", [0.0, np.inf, np.nan])
@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_or_non_finite_gradient_leaves_weights(ascent, bad, adaptive):
    rng = np.random.default_rng(3)
    weights = _tensors(rng)
    gradients = [np.zeros_like(w) for w in weights]
    gradients[1][2] = bad
    got = _run(ascent, gradients, weights, rho=0.5, adaptive=adaptive)
    for w, x in zip(weights, got):
        np.testing.assert_array_equal(x, w)


@pytest.mark.parametrize("ascent", ASCENTS)
def test_low_precision_weights_keep_their_dtype(ascent):
    rng = np.random.default_rng(4)
    gradients = [g.astype("float16") for g in _tensors(rng)]
    weights = [w.astype("float16") for w in _tensors(rng)]
    got = _run(ascent, gradients, weights, rho=0.3)
    expected = _numpy_perturbed(gradients, weights, 0.3, False, 0.0)
    for g, e in zip(got, expected):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g, e, rtol=2e-3, atol=2e-3)
