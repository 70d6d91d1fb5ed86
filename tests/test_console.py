"""The `keras-sam` entry point (keras_sam_cli.py): arguments, backend and
packages checked before Keras is imported, TensorFlow's native logs kept
off."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

import keras_sam_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv,backend", [
    (["demo", "--backend", "jax"], "jax"),
    (["--backend=torch", "sweep"], "torch"),
    (["demo", "--quick"], None),
    (["demo", "--backend"], None),
])
def test_requested_backend_reads_both_spellings(argv, backend):
    assert keras_sam_cli.requested_backend(argv) == backend


def _console(*argv, cwd=None):
    # This checkout's keras_sam_cli and keras_sam, from any folder.
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "keras_sam_cli", *argv],
        capture_output=True, text=True, env=env, timeout=300, cwd=cwd,
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
def test_an_error_after_importing_tensorflow_has_no_native_logs(tmp_path):
    # An error found after the import (data that cannot be read).
    (tmp_path / "train.npz").write_bytes(b"junk")
    (tmp_path / "test.npz").write_bytes(b"junk")
    quiet = _console("reproduce", "--quick", "--source", "npz",
                     "--data-dir", str(tmp_path), "--output-dir",
                     str(tmp_path / "run"))
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert lines == [lines[-1]], quiet.stderr
    assert lines[-1].startswith("keras-sam reproduce: error: ")
    assert not (tmp_path / "run").exists()


@tensorflow_only
@pytest.mark.slow
def test_tf_logs_brings_the_native_log_lines_back(tmp_path):
    (tmp_path / "train.npz").write_bytes(b"junk")
    (tmp_path / "test.npz").write_bytes(b"junk")
    loud = _console("--tf-logs", "reproduce", "--quick", "--source", "npz",
                    "--data-dir", str(tmp_path), cwd=tmp_path)
    assert loud.returncode == 2
    assert "oneDNN" in loud.stderr or "absl" in loud.stderr


# Runs `check_without_keras` on each command line of argv[2] (JSON) with
# the modules of argv[1] unimportable; prints, per line, the exit status
# (None: the command would run), stderr and whether Keras was imported.
_CHECK = """
import contextlib, io, json, sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None
import keras_sam_cli
results = []
for argv in json.loads(sys.argv[2]):
    stderr = io.StringIO()
    status = None
    try:
        with contextlib.redirect_stderr(stderr):
            keras_sam_cli.check_without_keras(argv)
    except SystemExit as exit:
        status = exit.code
    results.append([status, stderr.getvalue(), "keras" in sys.modules])
print(json.dumps(results))
"""


def _check_without_keras(folder, command_lines, missing=()):
    """The results of `_CHECK`, run in `folder`, a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", _CHECK, ",".join(missing),
         json.dumps(command_lines)],
        capture_output=True, text=True, env=env, timeout=120, cwd=folder,
        check=True,
    )
    return json.loads(result.stdout)


def _tree(folder):
    return sorted(str(path) for path in pathlib.Path(folder).rglob("*"))


def test_usage_errors_are_one_line_before_keras_and_write_nothing(
    tmp_path
):
    (tmp_path / "file").write_text("")
    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    cases = [
        (["sweep", "--rho", "abc"],
         "keras-sam sweep: error: argument --rho: expected comma-separated "
         "numbers, got 'abc'"),
        (["demo", "--epochs", "0"],
         "keras-sam demo: error: argument --epochs: must be >= 1, got 0"),
        (["landscape", "missing.keras", "--data", "probe.npz"],
         "keras-sam landscape: error: argument MODEL: no such file: "
         "'missing.keras'"),
        (["landscape", str(model), "--data", "probe.npz"],
         "keras-sam landscape: error: argument --data: no such file: "
         "'probe.npz'"),
        (["landscape", str(model), "--data", str(model), "--points", "1"],
         "keras-sam landscape: error: argument --points: must be at least "
         "2, got 1"),
        (["sweep", "--quick", "--tuner", "random"],
         "keras-sam sweep: error: argument --max-trials: --tuner random "
         "needs it"),
        (["sweep", "--quick", "--model", "nope"],
         "keras-sam sweep: error: argument --model: Unknown model "
         "name='nope'."),
        (["reproduce", "--quick", "--train-size", "5"],
         "keras-sam reproduce: error: argument --train-size: the training "
         "set is too small"),
        (["reproduce", "--quick", "--dataset", "imagenet2012"],
         "keras-sam reproduce: error: argument --quick: "),
        (["demo", "--quick", "--output-dir", "file/run"],
         "keras-sam demo: error: argument --output-dir: cannot make "
         "'file/run': "),
        (["demo", "--backend", "numpy"],
         "keras-sam demo: error: argument --backend: invalid choice: "
         "'numpy'"),
        ([], "keras-sam: error: the following arguments are required: "
             "COMMAND"),
    ]
    before = _tree(tmp_path)
    results = _check_without_keras(tmp_path, [argv for argv, _ in cases])
    for (argv, expected), (status, stderr, keras_imported) in zip(
        cases, results
    ):
        assert status == 2, (argv, stderr)
        assert stderr.startswith(expected), (argv, stderr)
        assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
        assert not keras_imported, argv
    assert _tree(tmp_path) == before


def test_a_correct_command_passes_the_check_without_keras(tmp_path):
    results = _check_without_keras(
        tmp_path, [["demo", "--quick", "--backend", "jax"]]
    )
    assert results == [[None, "", False]]
    assert _tree(tmp_path) == []


_INSTALL = (
    "the command line's packages come with the experiments extra, "
    "`pip install 'keras-sam[experiments]'` (from a clone: "
    "`pip install -e '.[experiments]'`)"
)


def test_a_missing_package_of_the_extra_is_one_line_naming_the_install(
    tmp_path
):
    (tmp_path / "model.keras").write_bytes(b"")
    (tmp_path / "probe.npz").write_bytes(b"")
    landscape = ["landscape", "model.keras", "--data", "probe.npz"]
    sweep = ["sweep", "--quick", "--backend"]
    cases = [
        (["PIL"], ["demo", "--quick", "--backend", "jax"],
         "keras-sam demo: error: needs Pillow, not installed here: "),
        (["PIL", "matplotlib"], ["demo"],
         "keras-sam demo: error: needs Pillow, matplotlib, not installed "
         "here: "),
        (["matplotlib"], landscape,
         "keras-sam landscape: error: needs matplotlib, not installed "
         "here: "),
        (["PIL"], ["reproduce", "--quick"],
         "keras-sam reproduce: error: needs Pillow, not installed here: "),
        (["keras_tuner"], [*sweep, "jax"],
         "keras-sam sweep: error: needs keras-tuner, not installed here: "),
        (["sklearn"], [*sweep, "jax", "--tuner", "bayesian",
                       "--max-trials", "2"],
         "keras-sam sweep: error: needs scikit-learn, not installed here: "),
        (["tensorboard"], [*sweep, "tensorflow"],
         "keras-sam sweep: error: needs tensorboard, not installed here: "),
    ]
    before = _tree(tmp_path)
    for missing, argv, expected in cases:
        [(status, stderr, keras_imported)] = _check_without_keras(
            tmp_path, [argv], missing
        )
        assert status == 2, (argv, stderr)
        assert stderr == expected + _INSTALL + "\n"
        assert not keras_imported
    assert _tree(tmp_path) == before
    # Only TensorFlow's KerasTuner imports tensorboard; only the Bayesian
    # search needs scikit-learn.
    assert _check_without_keras(
        tmp_path, [[*sweep, "jax"]], ["tensorboard", "sklearn"]
    ) == [[None, "", False]]


def test_the_demo_without_pillow_writes_nothing(tmp_path):
    """The issue's case: once a 34-line traceback and an empty folder."""
    code = (
        "import sys\n"
        "sys.modules['PIL'] = None\n"
        "import keras_sam_cli\n"
        "sys.exit(keras_sam_cli.main(['demo', '--quick', '--backend', "
        "'jax']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT), cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "keras-sam demo: error: needs Pillow, not installed here: "
        + _INSTALL + "\n"
    )
    assert _tree(tmp_path) == []
