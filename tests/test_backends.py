"""The JAX and PyTorch backends: numerical subset, parity, portability.

The session's backend is TensorFlow (Keras fixes it at import), so the
other backends run in subprocesses (tests/backend_jobs.py): the tests
marked `multi_backend`, a parity run whose final weights must agree
across all three backends, a `.keras` file saved here and trained on
there, and SAM under JAX's `DataParallel` on two virtual CPU devices.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

TESTS = Path(__file__).parent
OTHER_BACKENDS = ["jax", "torch"]

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="drives the other backends from the TensorFlow session",
)


def _run(args, backend, timeout, **env):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               **env)
    result = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=TESTS.parent,
    )
    assert result.returncode == 0, (
        result.stdout[-6000:] + result.stderr[-3000:]
    )
    return result


def _job(backend, *args, **env):
    pytest.importorskip(backend)
    return _run([str(TESTS / "backend_jobs.py"), *map(str, args)],
                backend, timeout=600, **env)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_multi_backend_subset_passes(backend):
    pytest.importorskip(backend)
    result = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
         "multi_backend and not slow", str(TESTS)],
        backend, timeout=1200,
    )
    assert " passed" in result.stdout


def test_same_weights_on_all_backends(tmp_path):
    outputs = {}
    for backend in ["tensorflow", *OTHER_BACKENDS]:
        _job(backend, "parity", tmp_path / f"{backend}.npz")
        outputs[backend] = np.load(tmp_path / f"{backend}.npz")
    reference = outputs["tensorflow"]
    for backend in OTHER_BACKENDS:
        for key in reference.files:
            np.testing.assert_allclose(
                outputs[backend][key], reference[key], rtol=1e-5, atol=1e-5,
                err_msg=f"{backend} differs from tensorflow in {key}",
            )


def test_saved_file_continues_training_on_other_backends(tmp_path):
    from backend_jobs import bn_model, compiled_sam, fixed_data

    x, y, rng = fixed_data()
    sam = compiled_sam(bn_model(rng), rho=0.1, adaptive=True, eta=0.05,
                       num_batch_splits=2)
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "tf.keras"
    sam.save(path)
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for backend in OTHER_BACKENDS:
        out = tmp_path / f"{backend}.npz"
        _job(backend, "resume", path, out)
        got = np.load(out)
        assert int(got["iterations"]) == 4
        for i, want in enumerate(sam.get_weights()):
            np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-5,
                                       atol=1e-5, err_msg=backend)


def test_jax_data_parallel_is_global_sam(tmp_path):
    out = tmp_path / "dp.npz"
    _job("jax", "data_parallel", out,
         XLA_FLAGS="--xla_force_host_platform_device_count=2")
    got = np.load(out)
    assert int(got["num_devices"]) == 2
    singles = sorted(k for k in got.files if k.startswith("single_"))
    for key in singles:
        np.testing.assert_allclose(
            got[key.replace("single", "data_parallel")], got[key],
            rtol=1e-5, atol=1e-6, err_msg=key,
        )
