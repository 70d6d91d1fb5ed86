"""Stability on matrices: SGD's second-moment map (with momentum) and
SAM's thresholds (`keras_sam.hessian.stability_theory`).

Every expected value is computed independently of the code under test:
the second-moment map is built here by enumerating every batch of a
small least-squares problem (Keras "mse" on a linear model: per-sample
Hessians `2 x_i x_i^T`, which do not commute) and taking
`mean_B kron(A_B, A_B)`, with `A_B` read off a NumPy copy of Keras's
`SGD.update_step` applied to unit vectors; Monte Carlo runs of that
update (checked step by step against `keras.optimizers.SGD`) and of
`keras_sam.SAMModel` test the predictions.
"""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

import keras_sam
from keras_sam import hessian
from keras_sam.hessian import stability_theory

multi_backend = pytest.mark.multi_backend


# Independent constructions ---------------------------------------------------


def unit_rows(num_samples, dim, seed):
    """Rows of norm 1 in random directions: per-sample Hessians of equal
    size that differ in direction (the non-commuting case)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hessians_of(x):
    return np.stack([2.0 * np.outer(row, row) for row in x])


def keras_sgd_step(x, v, gradient, learning_rate, momentum, nesterov):
    """`keras.optimizers.SGD.update_step`, written again in NumPy."""
    if momentum == 0.0:
        return x - learning_rate * gradient, v
    v = momentum * v - learning_rate * gradient
    if nesterov:
        return x + momentum * v - learning_rate * gradient, v
    return x + v, v


def transition_matrix(batch_hessian, learning_rate, momentum, nesterov):
    """The matrix of one linearised step on the state `(x, v)` (or `x`),
    column by column: the step applied to each unit state."""
    dim = len(batch_hessian)
    size = dim if momentum == 0.0 else 2 * dim
    columns = []
    for state in np.eye(size):
        x, v = state[:dim], state[dim:] if momentum else np.zeros(dim)
        x, v = keras_sgd_step(
            x, v, batch_hessian @ x, learning_rate, momentum, nesterov
        )
        columns.append(np.concatenate([x, v]) if momentum else x)
    return np.stack(columns, axis=1)


def enumerated_map(hessians, learning_rate, batch_size, momentum, nesterov):
    """`E_B[A_B (x) A_B]` over every batch of `batch_size` samples."""
    products = []
    for batch in itertools.combinations(range(len(hessians)), batch_size):
        a = transition_matrix(
            hessians[list(batch)].mean(axis=0),
            learning_rate,
            momentum,
            nesterov,
        )
        products.append(np.kron(a, a))
    return np.mean(products, axis=0)


def enumerated_growth(
    hessians, learning_rate, batch_size, momentum=0.0, nesterov=False
):
    matrix = enumerated_map(
        hessians, learning_rate, batch_size, momentum, nesterov
    )
    return np.max(np.abs(np.linalg.eigvals(matrix))) - 1.0


def wu_growth(hessians, learning_rate, batch_size, dataset_size=None):
    """`lambda_max((I - lr H)^2 + lr^2 c Sigma) - 1` (Wu, Ma & E)."""
    n = dataset_size or len(hessians)
    h = hessians.mean(axis=0)
    sigma = np.mean([hi @ hi for hi in hessians], axis=0) - h @ h
    factor = (n - batch_size) / (batch_size * (n - 1))
    step = np.eye(len(h)) - learning_rate * h
    m = step @ step + learning_rate**2 * factor * sigma
    return np.linalg.eigvalsh(m)[-1] - 1.0


def critical_learning_rate(growth, upper):
    """The learning rate in (0, upper) where `growth` turns positive."""
    low, high = 0.0, upper
    for _ in range(40):
        middle = (low + high) / 2
        if growth(middle) > 0:
            high = middle
        else:
            low = middle
    return (low + high) / 2


def mean_square_prediction(
    hessians, learning_rate, batch_size, momentum, nesterov, steps
):
    """`E|x_t|^2` after `steps` steps from `x_0 ~ N(0, I)`, `v_0 = 0`."""
    matrix = enumerated_map(
        hessians, learning_rate, batch_size, momentum, nesterov
    )
    dim = hessians.shape[1]
    size = int(round(np.sqrt(len(matrix))))
    start = np.zeros((size, size))
    start[:dim, :dim] = np.eye(dim)
    moment = np.linalg.matrix_power(matrix, steps) @ start.ravel()
    return np.trace(moment.reshape(size, size)[:dim, :dim])


def random_batches(rng, num_steps, num_copies, num_samples, batch_size):
    """Indices `(steps, batch_size, copies)`: for every step and copy an
    independent uniformly random batch, drawn without replacement."""
    keys = rng.random((num_steps, num_copies, num_samples))
    return np.argsort(keys, axis=-1)[..., :batch_size].transpose(0, 2, 1)


def simulate(x, batches, start, learning_rate, momentum, nesterov):
    """Runs the Keras update on `copies` independent linearised problems;
    returns the deviations `(steps + 1, copies, dim)`."""
    deviation, velocity = start.copy(), np.zeros_like(start)
    path = [deviation.copy()]
    for batch in batches:
        rows = x[batch]  # (batch_size, copies, dim)
        gradient = (
            2.0
            / len(batch)
            * np.einsum("bci,bcj,cj->ci", rows, rows, deviation)
        )
        deviation, velocity = keras_sgd_step(
            deviation, velocity, gradient, learning_rate, momentum, nesterov
        )
        path.append(deviation.copy())
    return np.stack(path)


# The second-moment map --------------------------------------------------------

MOMENTA = [(0.0, False), (0.5, False), (0.9, False), (0.9, True)]


@pytest.mark.parametrize("momentum, nesterov", MOMENTA)
def test_growth_matches_enumerated_batches(momentum, nesterov):
    x = np.random.default_rng(0).normal(size=(6, 3))
    hessians = hessians_of(x)
    sharpness = np.linalg.eigvalsh(hessians.mean(axis=0))[-1]
    threshold = hessian.gd_stability_threshold(1.0, momentum, nesterov)
    for fraction, batch_size in ((0.2, 1), (0.5, 2), (0.9, 3), (0.7, 6)):
        learning_rate = fraction * threshold / sharpness
        expected = enumerated_growth(
            hessians, learning_rate, batch_size, momentum, nesterov
        )
        growth = hessian.sgd_second_moment_growth(
            hessians,
            learning_rate,
            batch_size,
            momentum=momentum,
            nesterov=nesterov,
        )
        assert growth == pytest.approx(expected, abs=1e-10)


def test_arpack_path_matches_enumeration(monkeypatch):
    monkeypatch.setattr(stability_theory, "_DENSE_SECOND_MOMENT_SIZE", 0)
    x = np.random.default_rng(1).normal(size=(10, 4))
    hessians = hessians_of(x)
    sharpness = np.linalg.eigvalsh(hessians.mean(axis=0))[-1]
    for momentum, nesterov in MOMENTA[::2] + [MOMENTA[3]]:
        learning_rate = 0.4 / sharpness
        growth = hessian.sgd_second_moment_growth(
            hessians, learning_rate, 2, momentum=momentum, nesterov=nesterov
        )
        expected = enumerated_growth(
            hessians, learning_rate, 2, momentum, nesterov
        )
        assert growth == pytest.approx(expected, abs=1e-8)


def test_exact_growth_is_below_wu_bound_and_equal_when_commuting():
    hessians = hessians_of(unit_rows(8, 3, seed=2))
    h = hessians.mean(axis=0)
    assert np.abs(hessians[0] @ h - h @ hessians[0]).max() > 0.1
    gaps = []
    for learning_rate in (0.3, 0.8, 1.2, 1.6):
        for batch_size in (1, 2, 4):
            exact = hessian.sgd_second_moment_growth(
                hessians, learning_rate, batch_size
            )
            bound = wu_growth(hessians, learning_rate, batch_size)
            assert exact <= bound + 1e-12
            gaps.append(bound - exact)
    assert max(gaps) > 0.05
    # Rows along the axes: the H_i commute, and the bound is exact.
    x = np.zeros((6, 3))
    x[np.arange(6), [0, 1, 2, 0, 1, 2]] = [1.0, 0.5, 2.0, 1.5, 0.8, 1.2]
    commuting = hessians_of(x)
    for learning_rate, batch_size, dataset_size in ((0.4, 2, 100), (0.7, 1, 6)):
        exact = hessian.sgd_second_moment_growth(
            commuting, learning_rate, batch_size, dataset_size
        )
        bound = wu_growth(commuting, learning_rate, batch_size, dataset_size)
        assert exact == pytest.approx(bound, abs=1e-10)


@pytest.mark.parametrize("momentum, nesterov", MOMENTA)
def test_full_batch_growth_changes_sign_at_gd_threshold(momentum, nesterov):
    hessians = hessians_of(np.random.default_rng(3).normal(size=(5, 3)))
    sharpness = np.linalg.eigvalsh(hessians.mean(axis=0))[-1]
    threshold = hessian.gd_stability_threshold(1.0, momentum, nesterov)
    for fraction, sign in ((0.99, -1), (1.01, 1)):
        learning_rate = fraction * threshold / sharpness
        growth = hessian.sgd_second_moment_growth(
            hessians, learning_rate, 5, momentum=momentum, nesterov=nesterov
        )
        # Full batch: the map is S -> A S A^T, its radius max |mu(A)|^2.
        a = transition_matrix(
            hessians.mean(axis=0), learning_rate, momentum, nesterov
        )
        expected = np.max(np.abs(np.linalg.eigvals(a))) ** 2 - 1
        assert growth == pytest.approx(expected, abs=1e-10)
        assert np.sign(growth) == sign


def test_second_moment_growth_bad_arguments():
    hessians = hessians_of(np.ones((4, 2)))
    with pytest.raises(ValueError, match="sample_hessians"):
        hessian.sgd_second_moment_growth(np.ones((4, 2)), 0.1, 2)
    with pytest.raises(ValueError, match="learning_rate=0"):
        hessian.sgd_second_moment_growth(hessians, 0, 2)
    with pytest.raises(ValueError, match="batch_size=5, dataset_size=4"):
        hessian.sgd_second_moment_growth(hessians, 0.1, 5)
    with pytest.raises(ValueError, match="momentum=1.0"):
        hessian.sgd_second_moment_growth(hessians, 0.1, 2, momentum=1.0)
    with pytest.raises(ValueError, match="nesterov='yes'"):
        hessian.sgd_second_moment_growth(hessians, 0.1, 2, nesterov="yes")


# Monte Carlo ---------------------------------------------------------------


def rates_with_growth(hessians, batch_size, momentum, nesterov, growths):
    """The learning rates at which the enumerated growth is `growths`."""
    sharpness = np.linalg.eigvalsh(hessians.mean(axis=0))[-1]
    upper = hessian.gd_stability_threshold(1.0, momentum, nesterov) / sharpness
    return [
        critical_learning_rate(
            lambda lr, target=target: (
                enumerated_growth(hessians, lr, batch_size, momentum, nesterov)
                - target
            ),
            upper,
        )
        for target in growths
    ]


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False)] + MOMENTA[2:])
def test_monte_carlo_mean_square_follows_the_prediction(momentum, nesterov):
    """NumPy runs of Keras's update from `x_0 ~ N(0, I)` at growths of
    -0.06 and +0.06 per step: `E|x_20|^2` agrees with the second-moment
    map, and shrinks or grows; without momentum the runs at -0.06 shrink
    where Wu et al.'s bound (sufficient only) says unstable."""
    x = unit_rows(8, 3, seed=2)
    hessians = hessians_of(x)
    batch_size, steps, copies = 4, 20, 20_000
    rates = rates_with_growth(
        hessians, batch_size, momentum, nesterov, (-0.06, 0.06)
    )
    if momentum == 0.0:
        assert wu_growth(hessians, rates[0], batch_size) > 0.1
    rng = np.random.default_rng(0)
    for learning_rate, grows in zip(rates, (False, True)):
        start = rng.normal(size=(copies, 3))
        batches = random_batches(rng, steps, copies, 8, batch_size)
        path = simulate(x, batches, start, learning_rate, momentum, nesterov)
        mean_square = np.mean(np.sum(path[-1] ** 2, axis=-1))
        predicted = mean_square_prediction(
            hessians, learning_rate, batch_size, momentum, nesterov, steps
        )
        assert predicted / 1.5 < mean_square < 1.5 * predicted
        if grows:
            assert mean_square > 1.5 * 3.0
        else:
            assert mean_square < 3.0 / 1.5


class _Copies(keras.layers.Layer):
    """`copies` independent linear models `y = x . w_c`, input
    `(batch, copies, dim)`, kernel `(dim, copies)`."""

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], input_shape[-2]), initializer="zeros"
        )

    def call(self, inputs):
        return ops.einsum("bcd,dc->bc", inputs, self.kernel)


def _sum_over_copies(y_true, y_pred):
    # The mean over the batch of the sum over copies: each copy's
    # gradient is the gradient of its own "mse".
    return ops.sum(ops.square(y_true - y_pred), axis=-1)


def keras_runs(x, w_star, batches, start, learning_rate, momentum, nesterov):
    """Keras `SGD` on the copies; returns the deviations from `w_star`."""
    steps, batch_size, copies = batches.shape
    dim = x.shape[1]
    inputs = keras.Input((copies, dim))
    layer = _Copies()
    model = keras.Model(inputs, layer(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate, momentum=momentum, nesterov=nesterov
        ),
        loss=_sum_over_copies,
    )
    layer.kernel.assign((w_star[:, None] + start.T).astype("float32"))
    y = x @ w_star
    path = [start]
    for batch in batches:
        model.train_on_batch(
            x[batch].astype("float32"), y[batch].astype("float32")
        )
        kernel = np.asarray(ops.convert_to_numpy(layer.kernel), np.float64)
        path.append(kernel.T - w_star)
    return np.stack(path)


@pytest.mark.parametrize(
    "momentum, nesterov",
    [
        pytest.param(0.9, False),
        pytest.param(0.9, True),
        pytest.param(0.0, False, marks=pytest.mark.slow),
    ],
)
def test_keras_sgd_follows_the_linearised_update(momentum, nesterov):
    """Keras's SGD, started near an interpolating minimum `w*` of "mse",
    makes the steps of the NumPy update (so the simulations above are
    its runs), and its mean-square distance shrinks where the predicted
    growth is -0.06 per step and grows where it is +0.06."""
    x = unit_rows(8, 3, seed=2)
    hessians = hessians_of(x)
    w_star = np.array([0.5, -1.0, 2.0])
    batch_size, steps, copies = 4, 20, 5000
    rates = rates_with_growth(
        hessians, batch_size, momentum, nesterov, (-0.06, 0.06)
    )
    rng = np.random.default_rng(1)
    mean_squares = []
    for learning_rate in rates:
        start = 1e-2 * rng.normal(size=(copies, 3))
        batches = random_batches(rng, steps, copies, 8, batch_size)
        runs = keras_runs(
            x, w_star, batches, start, learning_rate, momentum, nesterov
        )
        expected = simulate(
            x, batches, start, learning_rate, momentum, nesterov
        )
        scale = np.abs(expected).max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(runs / scale, expected / scale, atol=1e-4)
        mean_squares.append(np.mean(np.sum(runs[-1] ** 2, axis=-1)))
    # From 3e-4, predicted 0.5e-4 to 1.1e-4 and 5.7e-4 to 1.2e-3.
    assert mean_squares[0] < 3e-4 / 1.5
    assert mean_squares[1] > 3e-4
    assert mean_squares[1] > 4 * mean_squares[0]


# SAM ------------------------------------------------------------------------


def usam_run(sharpness, learning_rate, rho, momentum, nesterov, steps=400):
    """Un-normalized SAM (`eps = rho g`) with Keras's update on
    `sharpness * x^2 / 2`, from `x = 1`; returns `|x|` at the end."""
    x, v = 1.0, 0.0
    for _ in range(steps):
        perturbed = x + rho * sharpness * x
        x, v = keras_sgd_step(
            x, v, sharpness * perturbed, learning_rate, momentum, nesterov
        )
    return abs(x)


@pytest.mark.parametrize("momentum, nesterov", MOMENTA)
def test_sam_thresholds(momentum, nesterov):
    learning_rate, rho = 0.1, 0.05
    gd = hessian.gd_stability_threshold(learning_rate, momentum, nesterov)
    # Normalized SAM at a minimum: GD's threshold; rho = 0: GD's.
    assert hessian.sam_stability_threshold(
        learning_rate, rho, momentum, nesterov
    ) == pytest.approx(gd)
    assert hessian.sam_stability_threshold(
        learning_rate, 0.0, momentum, nesterov, normalized=False
    ) == pytest.approx(gd)
    # Un-normalized: lambda (1 + rho lambda) = GD's threshold, and a
    # simulation converges 2% below it and diverges 2% above.
    usam = hessian.sam_stability_threshold(
        learning_rate, rho, momentum, nesterov, normalized=False
    )
    assert usam * (1 + rho * usam) == pytest.approx(gd, rel=1e-12)
    assert usam_run(0.98 * usam, learning_rate, rho, momentum, nesterov) < 1e-2
    assert usam_run(1.02 * usam, learning_rate, rho, momentum, nesterov) > 1e2
    # Long & Bartlett's edge: lambda + rho lambda^2 / |g| = GD's
    # threshold; on the period-2 orbit (|g| = lambda A) it is lambda.
    edge = hessian.sam_stability_threshold(
        learning_rate, rho, momentum, nesterov, gradient_norm=0.3
    )
    assert edge + rho * edge**2 / 0.3 == pytest.approx(gd, rel=1e-12)
    sharpness = 0.8 * gd
    amplitude = hessian.sam_oscillation_amplitude(
        learning_rate, rho, sharpness, momentum, nesterov
    )
    assert hessian.sam_stability_threshold(
        learning_rate,
        rho,
        momentum,
        nesterov,
        gradient_norm=sharpness * amplitude,
    ) == pytest.approx(sharpness, rel=1e-12)
    assert hessian.sam_oscillation_amplitude(
        learning_rate, rho, gd, momentum, nesterov
    ) == float("inf")


def test_sam_oscillation_amplitude_is_a_period_two_orbit():
    """`x = A, -A, A, ...` is an orbit of normalized SAM with Keras's
    update, the velocity on it `+-2 A` (heavy ball) or `+-2 A / (1 + 2
    beta)` (Nesterov)."""
    learning_rate, rho, sharpness = 0.1, 0.05, 12.0
    for momentum, nesterov in MOMENTA:
        amplitude = hessian.sam_oscillation_amplitude(
            learning_rate, rho, sharpness, momentum, nesterov
        )
        x = amplitude
        v = 2 * amplitude / (1 + 2 * momentum if nesterov else 1.0)
        for sign in (-1, 1, -1, 1):
            gradient = sharpness * (x + rho * np.sign(x))
            x, v = keras_sgd_step(
                x, v, gradient, learning_rate, momentum, nesterov
            )
            assert x == pytest.approx(sign * amplitude, rel=1e-12)


def test_sam_threshold_bad_arguments():
    with pytest.raises(ValueError, match="rho=-1"):
        hessian.sam_stability_threshold(0.1, -1)
    with pytest.raises(ValueError, match="gradient_norm=0"):
        hessian.sam_stability_threshold(0.1, 0.05, gradient_norm=0)
    with pytest.raises(ValueError, match="normalized=False"):
        hessian.sam_stability_threshold(
            0.1, 0.05, normalized=False, gradient_norm=1.0
        )
    with pytest.raises(ValueError, match="sharpness=0"):
        hessian.sam_oscillation_amplitude(0.1, 0.05, 0)


def sam_run(sharpnesses, learning_rate, rho, momentum, steps):
    """`keras_sam.SAMModel` (SGD, full batch) on "mse" with Hessian
    `diag(sharpnesses)`, from 0.1 away from the minimum `w*`; returns the
    deviations from `w*` of the last two steps."""
    dim = len(sharpnesses)
    # Sample k is sqrt(N a_k / 2) e_k: "mse" gives H = diag(a).
    x = np.diag(np.sqrt(dim * np.asarray(sharpnesses) / 2.0))
    w_star = np.linspace(0.5, -0.5, dim)
    y = (x @ w_star)[:, None]
    inner = keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(1, use_bias=False)]
    )
    inner.set_weights([(w_star + 0.1).reshape(dim, 1).astype("float32")])
    sam = keras_sam.SAMModel(inner, rho=rho)
    sam.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum),
        loss="mse",
    )
    tail = []
    # Keras (JAX) syncs the variables after `fit`: read them between fits.
    for num_steps in (steps - 2, 1, 1):
        sam.fit(
            np.tile(x, (num_steps, 1)).astype("float32"),
            np.tile(y, (num_steps, 1)).astype("float32"),
            batch_size=dim,
            shuffle=False,
            verbose=0,
        )
        kernel = inner.layers[-1].get_weights()[0]
        tail.append(np.asarray(kernel, np.float64)[:, 0] - w_star)
    tail = tail[1:]
    return np.array(tail)


@multi_backend
def test_sam_model_bounces_below_the_threshold_and_diverges_above():
    learning_rate, rho, steps = 0.1, 0.05, 150
    threshold = hessian.sam_stability_threshold(learning_rate, rho)
    for fraction in (0.75, 0.95):
        sharpness = fraction * threshold
        tail = sam_run(
            [sharpness, 0.3 * sharpness], learning_rate, rho, 0.0, steps
        )
        amplitude = hessian.sam_oscillation_amplitude(
            learning_rate, rho, sharpness
        )
        # Along the top eigenvector: +-A alternately; the other decays.
        np.testing.assert_allclose(np.abs(tail[:, 0]), amplitude, rtol=1e-3)
        assert tail[0, 0] == pytest.approx(-tail[1, 0], rel=1e-3)
        assert np.abs(tail[:, 1]).max() < 1e-4
    tail = sam_run([1.05 * threshold, 5.0], learning_rate, rho, 0.0, steps)
    assert not np.abs(tail).max() < 1e2  # large, inf or nan


@pytest.mark.slow
def test_sam_model_with_momentum_threshold():
    learning_rate, rho, momentum, steps = 0.1, 0.05, 0.5, 300
    threshold = hessian.sam_stability_threshold(learning_rate, rho, momentum)
    sharpness = 0.97 * threshold
    tail = sam_run(
        [sharpness, 0.3 * sharpness], learning_rate, rho, momentum, steps
    )
    amplitude = hessian.sam_oscillation_amplitude(
        learning_rate, rho, sharpness, momentum
    )
    np.testing.assert_allclose(np.abs(tail[:, 0]), amplitude, rtol=1e-2)
    tail = sam_run([1.03 * threshold, 5.0], learning_rate, rho, momentum, steps)
    assert not np.abs(tail).max() < 1e2
