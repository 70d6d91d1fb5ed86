"""The `keras-sam` console command's entry point.

It runs before anything imports Keras, which fixes its backend and, on
TensorFlow, prints TensorFlow's native log lines (oneDNN, absl) on import
whatever `TF_CPP_MIN_LOG_LEVEL` says. So it first parses and checks the
arguments without importing Keras (`check_without_keras`: `--help`,
`--version`, a usage error, a missing backend or package are answered in
a fraction of a second, in one line, before anything is written), then
applies `--backend NAME` to `KERAS_BACKEND`, sends native (C++) output on
stderr to /dev/null unless `--tf-logs` is given (Python's own errors and
warnings still print), and runs `keras_sam.experiments.cli.main`.
"""

import importlib.util
import os
import sys
import types

# The Keras backends `--backend` takes.
BACKENDS = ("tensorflow", "jax", "torch")


def requested_backend(argv):
    """The value of `--backend NAME` or `--backend=NAME` in `argv`."""
    for index, argument in enumerate(argv):
        if argument == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--backend="):
            return argument.split("=", 1)[1]
    return None


def quiet_native_stderr():
    """Points file descriptor 2 at /dev/null and `sys.stderr` at a copy
    of the old one: native libraries' logs vanish, Python's stay."""
    sys.stderr.flush()
    python_stderr = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = python_stderr


def check_without_keras(argv):
    """Parses and checks `argv` without importing Keras.

    The parser and the checks (`keras_sam.experiments.cli.parse_arguments`)
    are loaded from `keras_sam/experiments/cli/` with a bare `keras_sam`
    package: its submodules import, but its `__init__.py`, which imports
    Keras and its backend (seconds, and TensorFlow's logs), does not run.
    Exits for `--help` and `--version` (status 0) and for a usage error,
    a missing backend or a missing package (status 2, one line on
    stderr, nothing written); returns when the command is to run, or if
    the parser cannot be loaded that way (the full import then checks the
    same). Leaves no `keras_sam` module imported.
    """
    spec = importlib.util.find_spec("keras_sam")
    if spec is None or spec.submodule_search_locations is None:
        return
    loaded = sys.modules.get("keras_sam")
    package = types.ModuleType("keras_sam")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["keras_sam"] = package
    try:
        from keras_sam.experiments import cli

        args, problem = cli.parse_arguments(argv)
        if problem is not None:
            sys.exit(cli._arguments.error(args.command, problem))
    except ImportError:
        return  # an incomplete package: the full import reports it
    finally:
        for name in [m for m in sys.modules
                     if m == "keras_sam" or m.startswith("keras_sam.")]:
            del sys.modules[name]
        if loaded is not None:
            sys.modules["keras_sam"] = loaded


def main(argv=None):
    """Runs `keras-sam ARGS`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    native_logs = "--tf-logs" in argv
    argv = [a for a in argv if a != "--tf-logs"]
    check_without_keras(argv)
    backend = requested_backend(argv)
    if backend in BACKENDS:
        os.environ["KERAS_BACKEND"] = backend
    if not native_logs:
        quiet_native_stderr()
    from keras_sam.experiments import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
