"""WeightTrajectory and landscape.trajectory_plane on gradient descent on a
quadratic, whose trajectory is known in closed form.

`y = x . w` with Keras's "mse" is `L(w) = mean_i (x_i . w - y_i)^2`, with
gradient `H w - b`, `H = 2/N X^T X`, `b = 2/N X^T y`; full-batch SGD
without momentum at learning rate `lr` gives `w_t = w* + (I - lr H)^t
(w_0 - w*)`. The principal directions are checked against an SVD of the
closed-form path in NumPy, the loss on the plane against `L` itself.
"""

import os
import shutil

import keras
import numpy as np
import pytest
from scripts import REPO_ROOT, load_script

import keras_sam
from keras_sam import landscape
from keras_sam.callbacks import WeightTrajectory

SAMPLES, DIM, LEARNING_RATE = 8, 3, 0.1


def quadratic_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, DIM)).astype("float32")
    y = rng.normal(size=(SAMPLES, 1)).astype("float32")
    inputs = keras.Input((DIM,))
    model = keras.Model(
        inputs, keras.layers.Dense(1, use_bias=False)(inputs)
    )
    w0 = np.array([[2.0], [-1.0], [1.5]], "float32")
    model.set_weights([w0])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    return model, x, y, w0.ravel().astype(np.float64)


def closed_form_path(x, y, w0, steps):
    x, y = x.astype(np.float64), y.astype(np.float64).ravel()
    h = 2.0 / SAMPLES * x.T @ x
    w_star = np.linalg.solve(x.T @ x, x.T @ y)
    step = np.eye(DIM) - LEARNING_RATE * h
    return np.array(
        [w_star + np.linalg.matrix_power(step, t) @ (w0 - w_star)
         for t in steps]
    )


def quadratic_loss(x, y, w):
    x, y = x.astype(np.float64), y.astype(np.float64).ravel()
    return np.mean((x @ w - y) ** 2)


@pytest.mark.multi_backend
def test_records_follow_gradient_descent_and_resume(tmp_path):
    model, x, y, w0 = quadratic_problem()
    folder = tmp_path / "trajectory"
    fit = {"batch_size": SAMPLES, "shuffle": False, "verbose": 0}
    model.fit(x, y, epochs=10, callbacks=[WeightTrajectory(folder, 2)], **fit)
    steps, weights = WeightTrajectory.load(folder)
    np.testing.assert_array_equal(steps, np.arange(0, 11, 2))
    # Resumed with a new callback: numbering goes on from the optimizer's
    # iterations, the record of step 10 is not written again.
    before = os.path.getmtime(folder / "weights_step000000010.npy")
    model.fit(x, y, epochs=4, callbacks=[WeightTrajectory(folder, 2)], **fit)
    assert os.path.getmtime(folder / "weights_step000000010.npy") == before
    steps, weights = WeightTrajectory.load(folder)
    np.testing.assert_array_equal(steps, np.arange(0, 15, 2))
    assert weights.dtype == np.float32 and weights.shape == (8, DIM)
    np.testing.assert_allclose(
        weights, closed_form_path(x, y, w0, steps), rtol=1e-5, atol=1e-6
    )


@pytest.mark.multi_backend
def test_trajectory_plane_of_gradient_descent_on_a_quadratic():
    model, x, y, w0 = quadratic_problem()
    steps = np.arange(0, 31, 3)
    path = closed_form_path(x, y, w0, steps)
    model.set_weights([path[-1].reshape(DIM, 1).astype("float32")])
    plane = landscape.trajectory_plane(
        model, (x, y), (steps, path), num_points=5, margin=0.5
    )
    # PCA in NumPy: the centered differences from the last point.
    differences = path - path[-1]
    centered = differences - differences.mean(axis=0)
    _, singular, vt = np.linalg.svd(centered)
    np.testing.assert_allclose(
        plane["explained_variance"],
        singular[:2] ** 2 / np.sum(singular**2),
        rtol=1e-5,
    )
    directions = np.array(
        [np.concatenate([np.ravel(p) for p in d]) for d in plane["directions"]]
    )
    signs = np.sign(np.sum(directions * vt[:2], axis=1))
    np.testing.assert_allclose(directions * signs[:, None], vt[:2],
                               atol=1e-6)
    np.testing.assert_allclose(plane["path"], differences @ directions.T,
                               atol=1e-6)
    np.testing.assert_allclose(plane["path"][-1], [0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(plane["step"], steps)
    # The grid covers the path with half its extent on each side.
    extent = np.ptp(plane["path"][:, 0])
    assert plane["alpha"][0] == pytest.approx(
        plane["path"][:, 0].min() - 0.5 * extent
    )
    for i, alpha in enumerate(plane["alpha"]):
        for j, beta in enumerate(plane["beta"]):
            w = path[-1] + alpha * directions[0] + beta * directions[1]
            assert plane["loss"][i, j] == pytest.approx(
                quadratic_loss(x, y, w), rel=1e-4
            )


def test_trajectory_plane_reads_a_folder_and_checks_its_arguments(tmp_path):
    model, x, y, _ = quadratic_problem()
    model.fit(x, y, epochs=4, batch_size=SAMPLES, verbose=0,
              callbacks=[WeightTrajectory(tmp_path, 1)])
    plane = landscape.trajectory_plane(model, (x, y), tmp_path, num_points=3)
    assert plane["path"].shape == (5, 2)
    assert plane["loss"].shape == (3, 3)
    assert plane["explained_variance"].sum() <= 1 + 1e-9
    with pytest.raises(ValueError, match="trajectory"):
        landscape.trajectory_plane(model, (x, y), (np.arange(1),
                                                   np.zeros((1, DIM))))
    with pytest.raises(ValueError, match="trajectory"):
        landscape.trajectory_plane(model, (x, y), 3)
    with pytest.raises(ValueError, match="every_n_steps"):
        WeightTrajectory(tmp_path, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="directory"):
        WeightTrajectory.load(empty)
    assert keras_sam.callbacks.WeightTrajectory is WeightTrajectory



def test_committed_trajectory_plot_is_drawn_from_its_csvs(tmp_path):
    script = load_script("benchmarks/trajectory_plane.py")
    committed = REPO_ROOT / "saved_results" / "measurement" / "trajectory"
    for name in ("path.csv", "surface.csv", "directions.csv", "run.json"):
        shutil.copy(committed / name, tmp_path / name)
    script.main(["--plot-only", "--output", str(tmp_path)])
    assert (tmp_path / "trajectory.png").stat().st_size > 10_000
    path = script.read_csv(tmp_path / "path.csv")
    assert [float(path[-1]["alpha"]), float(path[-1]["beta"])] == [0.0, 0.0]
    explained = [
        float(r["explained_variance"])
        for r in script.read_csv(tmp_path / "directions.csv")
    ]
    assert explained[0] >= explained[1] and sum(explained) <= 1.0
