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


def _console(*argv):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    return subprocess.run(
        [sys.executable, "-m", "keras_sam_cli", *argv],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_help_and_version_answer_without_importing_keras():
    code = (
        "import sys, keras_sam_cli\n"
        "try:\n"
        "    keras_sam_cli.main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    print('keras' in sys.modules, exit.code)\n"
    )
    for argv in (["--help"], ["sweep", "--help"], ["--version"]):
        result = subprocess.run([sys.executable, "-c", code, *argv],
                                capture_output=True, text=True, timeout=120)
        assert result.stdout.splitlines()[-1] == "False 0", result.stderr


tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow's import prints the native logs",
)


@tensorflow_only
def test_an_argument_error_after_importing_tensorflow_has_no_native_logs():
    quiet = _console("demo", "--epochs", "-1")
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert lines[0].startswith("usage: keras-sam demo"), quiet.stderr
    assert lines[-1].startswith("keras-sam demo: error: argument --epochs")
    assert not any("oneDNN" in line or "absl" in line for line in lines)


@tensorflow_only
@pytest.mark.slow
def test_tf_logs_brings_the_native_log_lines_back():
    loud = _console("--tf-logs", "demo", "--epochs", "-1")
    assert loud.returncode == 2
    assert "oneDNN" in loud.stderr or "absl" in loud.stderr
