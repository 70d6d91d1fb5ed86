"""Tests for `benchmarks/step_time.py` at tiny sizes (not timings)."""

import importlib.util
import json
import os
import pathlib
import sys

import keras
import numpy as np
import pytest
from scripts import load_script, run_ok

import keras_sam

SCRIPT = (
    pathlib.Path(__file__).resolve().parent.parent
    / "benchmarks"
    / "step_time.py"
)


def _load_script():
    return load_script("benchmarks/step_time.py")


def test_tiny_run_writes_json_and_readme_section(tmp_path):
    step_time = _load_script()
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nHand-written notes stay.\n")
    arguments = [
        "--backend",
        keras.backend.backend(),
        "--model",
        "small-cnn",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--output",
        str(tmp_path),
    ]
    assert step_time.main(arguments) == 0
    (path,) = tmp_path.glob("step_time_*.json")
    record = json.loads(path.read_text())
    results = record["results"]
    assert {"keras_sgd", "sam_model"} <= set(results)
    if keras.backend.backend() == "tensorflow" and _has("tf_keras"):
        assert {"tf_keras_sgd", "tf_keras_sam"} <= set(results)
        assert "sam_model_over_tf_keras_sam" in record["ratios"]
    for result in results.values():
        assert len(result["ms_per_step_by_repeat"]) == 2
        ms = result["median_ms_per_step"]
        assert result["images_per_second"] == pytest.approx(8 / ms * 1e3)
    ratio = record["ratios"]["sam_model_over_keras_sgd"]
    assert ratio == pytest.approx(
        results["sam_model"]["median_ms_per_step"]
        / results["keras_sgd"]["median_ms_per_step"]
    )
    for key in ("device", "backend", "versions", "command", "date"):
        assert record[key]
    assert record["config"]["parameters"] == _small_cnn_parameters(16)

    # Regenerating keeps one section and the hand-written text.
    step_time.regenerate_readme(tmp_path)
    text = readme.read_text()
    assert text.count(step_time.README_BEGIN) == 1
    assert "Hand-written notes stay." in text
    assert path.name in text and record["command"] in text


@pytest.mark.multi_backend
@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="a Keras-JAX train step"
)
def test_minimal_jax_sam_is_sam():
    # The reference the GPU figures are compared with must be the same
    # algorithm: equal weights (and BatchNorm statistics) to SAMModel.
    step_time = _load_script()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)).astype("float32")
    y = rng.integers(0, 3, size=16)

    def build():
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(8),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.Dense(3),
            ]
        )

    trained = []
    for wrap in (step_time.minimal_jax_sam, keras_sam.SAMModel):
        inner = build()
        model = wrap(inner, rho=0.3)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        trained.append(inner.get_weights())
    start = build().get_weights()
    # All but the first Dense bias (cancelled by BatchNorm) have moved.
    moved = [not np.allclose(w, w0) for w, w0 in zip(trained[1], start)]
    assert moved == [True, False] + [True] * 6
    for minimal, sam in zip(*trained):
        np.testing.assert_allclose(minimal, sam, rtol=1e-5, atol=1e-6)


def _has(module):
    return importlib.util.find_spec(module) is not None


def _small_cnn_parameters(w, classes=10):
    convs = 9 * (3 * w + w * w + 2 * w * w + 4 * w * w + 8 * w * w)
    convs += 9 * 16 * w * w
    batch_norm = 4 * (2 * w + 4 * w + 8 * w)  # gamma, beta, mean, variance
    return convs + batch_norm + 4 * w * classes + classes


@pytest.mark.slow
def test_jax_backend_runs_without_tensorflow(tmp_path):
    # The GPU machine has JAX and no TensorFlow: block its import.
    code = (
        "import runpy, sys\n"
        "for name in ('tensorflow', 'tf_keras', 'tensorboard'):\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--backend', 'jax', '--model', "
        "'small-cnn', '--batch-size', '8', '--steps', '2', '--warmup', "
        "'1', '--repeats', '1', '--mixed-precision', 'bfloat16', "
        f"'--output', {str(tmp_path)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    run_ok([sys.executable, "-c", code], env=env)
    (path,) = tmp_path.glob("step_time_jax_*bfloat16*.json")
    record = json.loads(path.read_text())
    assert set(record["results"]) == {
        "keras_sgd",
        "sam_model",
        "minimal_jax_sam",
    }
    assert "sam_model_over_minimal_jax_sam" in record["ratios"]
    assert "tensorflow" not in record["versions"]
