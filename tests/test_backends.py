"""The JAX and PyTorch backends: numerical subset and backend parity.

The session's backend is TensorFlow (Keras fixes it at import), so the
other backends run in subprocesses: the tests marked `multi_backend`,
and a parity run whose final weights must agree across all three.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
OTHER_BACKENDS = ["jax", "torch"]


def _run(args, backend, timeout):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True,
        timeout=timeout, cwd=TESTS.parent,
    )


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_multi_backend_subset_passes(backend):
    pytest.importorskip(backend)
    result = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
         "multi_backend and not slow", str(TESTS)],
        backend, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_same_weights_on_all_backends(tmp_path):
    outputs = {}
    for backend in ["tensorflow", *OTHER_BACKENDS]:
        pytest.importorskip(backend)
        path = tmp_path / f"{backend}.npz"
        result = _run([str(TESTS / "backend_parity_run.py"), str(path)],
                      backend, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[backend] = np.load(path)
    reference = outputs["tensorflow"]
    for backend in OTHER_BACKENDS:
        for key in reference.files:
            np.testing.assert_allclose(
                outputs[backend][key], reference[key], rtol=1e-5, atol=1e-5,
                err_msg=f"{backend} differs from tensorflow in {key}",
            )
