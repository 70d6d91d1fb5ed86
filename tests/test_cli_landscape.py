"""`keras-sam landscape` on linear least-squares models, whose Hessian,
losses and lines have closed forms."""

import csv

import keras
import numpy as np
import pytest

from keras_sam.experiments import cli


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _linear_model(weights, path):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(1, use_bias=False)]
    )
    model.set_weights([np.asarray(weights, "float32")[:, None]])
    model.compile(optimizer="sgd", loss="mse")
    model.save(path)
    return path


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = (x @ [1.0, -2.0, 0.5])[:, None].astype("float32")
    np.savez(tmp_path / "probe.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:20] + 0.1, y=y[:20])
    first = _linear_model([1.0, -2.0, 0.5], tmp_path / "first.keras")
    second = _linear_model([0.2, 0.3, -1.0], tmp_path / "second.keras")
    return x, y, first, second


def _loss(w, x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    return float(np.mean((x @ np.asarray(w, np.float64) - y[:, 0]) ** 2))


def test_landscape_writes_closed_form_numbers_and_plots(saved, tmp_path):
    x, y, first, second = saved
    output = tmp_path / "out"
    assert cli.main([
        "landscape", str(first), str(second), "--data",
        str(tmp_path / "probe.npz"), "--test-data",
        str(tmp_path / "test.npz"), "--output-dir", str(output),
        "--points", "5", "--density-steps", "3", "--density-runs", "1",
        "--surface-2d",
    ]) == 0
    # mse of a linear model: H = 2 X^T X / n whatever the weights.
    eigenvalues = np.linalg.eigvalsh(2 * x.T.astype(np.float64) @ x / len(x))
    measures = _rows(output / "measures.csv")
    assert [r["model"] for r in measures] == ["first", "second"]
    for row in measures:
        assert float(row["top_eigenvalue"]) == pytest.approx(
            eigenvalues[-1], rel=1e-5)
    assert float(measures[0]["loss"]) == pytest.approx(0.0, abs=1e-10)
    # Density: 3 nodes within the spectrum, weights summing to 1.
    density = [r for r in _rows(output / "density.csv")
               if r["model"] == "first"]
    assert sum(float(r["weight"]) for r in density) == pytest.approx(1.0)
    assert all(eigenvalues[0] - 1e-6 <= float(r["node"])
               <= eigenvalues[-1] + 1e-6 for r in density)
    # The line from first to second, on probe and test data.
    w0, w1 = np.array([1.0, -2.0, 0.5]), np.array([0.2, 0.3, -1.0])
    line = _rows(output / "interpolation.csv")
    assert len(line) == 2 * 9
    test_x, test_y = x[:20] + 0.1, y[:20]
    for row in line:
        alpha = float(row["alpha"])
        data = (x, y) if row["split"] == "probe" else (test_x, test_y)
        want = _loss((1 - alpha) * w0 + alpha * w1, *data)
        assert float(row["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-9)
    # Around each model, alpha = 0 is the model's own loss.
    for row in _rows(output / "surface_1d.csv"):
        if float(row["alpha"]) == 0.0 and row["split"] == "probe":
            w = w0 if row["model"] == "first" else w1
            assert float(row["loss"]) == pytest.approx(
                _loss(w, x, y), rel=1e-5, abs=1e-9)
    for name in ("density", "surface_1d", "surface_2d", "interpolation"):
        assert (output / f"{name}.png").stat().st_size > 0


@pytest.mark.parametrize("change,message", [
    (lambda p: p["data"].unlink(), "argument --data: no such file"),
    (lambda p: np.savez(p["data"], x=np.zeros((2, 3))),
     "has no array 'y'"),
    (lambda p: p["data"].write_bytes(b"not an npz"),
     "is not a valid npz file"),
    (lambda p: p["first"].write_bytes(b"junk"), "could not load"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    saved, tmp_path, capsys, change, message
):
    _, _, first, second = saved
    paths = {"data": tmp_path / "probe.npz", "first": first}
    change(paths)
    output = tmp_path / "never"
    assert cli.main([
        "landscape", str(first), str(second), "--data",
        str(paths["data"]), "--output-dir", str(output),
    ]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("keras-sam landscape: error: ")
    assert message in error and "\n" not in error
    assert not output.exists()
