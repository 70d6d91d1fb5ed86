"""The `keras-sam` entry point (keras_sam_cli.py): backend applied and
checked before Keras is imported, TensorFlow's native logs kept off."""

import os
import subprocess
import sys

import keras
import pytest

import keras_sam_cli


@pytest.mark.parametrize("argv,backend", [
    (["demo", "--backend", "jax"], "jax"),
    (["--backend=torch", "sweep"], "torch"),
    (["demo", "--quick"], None),
    (["demo", "--backend"], None),
])
def test_requested_backend_reads_both_spellings(argv, backend):
    assert keras_sam_cli.requested_backend(argv) == backend


def test_a_missing_backend_package_says_what_to_install():
    message = keras_sam_cli.missing_backend("jax", find_spec=lambda _: None)
    assert "'jax'" in message and "pip install 'keras-sam[jax]'" in message
    assert keras_sam_cli.missing_backend(
        "torch", find_spec=lambda _: object()) is None
    assert keras_sam_cli.missing_backend("nope") is None


def _help(*extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    return subprocess.run(
        [sys.executable, "-m", "keras_sam_cli", *extra, "--help"],
        capture_output=True, text=True, env=env, timeout=300,
    )


tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow's import prints the native logs",
)


@tensorflow_only
def test_help_prints_no_native_log_lines():
    quiet = _help()
    assert quiet.returncode == 0 and "usage: keras-sam" in quiet.stdout
    assert quiet.stderr == ""


@tensorflow_only
@pytest.mark.slow
def test_tf_logs_brings_the_native_log_lines_back():
    loud = _help("--tf-logs")
    assert loud.returncode == 0 and "usage: keras-sam" in loud.stdout
    assert "oneDNN" in loud.stderr or "absl" in loud.stderr
