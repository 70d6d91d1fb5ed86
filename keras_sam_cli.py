"""The `keras-sam` console command's entry point.

It runs before anything imports Keras, which fixes its backend and, on
TensorFlow, prints TensorFlow's native log lines (oneDNN, absl) on import
whatever `TF_CPP_MIN_LOG_LEVEL` says. So it applies `--backend NAME` to
`KERAS_BACKEND`, says what to install if the backend's package is
missing, sends native (C++) output on stderr to /dev/null unless
`--tf-logs` is given (Python's own errors and warnings still print), and
then runs `keras_sam.experiments.cli.main`. `--help` and `--version`
answer without importing Keras at all (`answer_without_keras`).
"""

import ast
import importlib.util
import os
import sys
import types

# The package of each Keras backend, and the setup.cfg extra that has it.
BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow", "cpu"),
    "jax": ("jax", "jax"),
    "torch": ("torch", "torch"),
}


def requested_backend(argv):
    """The value of `--backend NAME` or `--backend=NAME` in `argv`."""
    for index, argument in enumerate(argv):
        if argument == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--backend="):
            return argument.split("=", 1)[1]
    return None


def missing_backend(backend, find_spec=importlib.util.find_spec):
    """`None` if `backend`'s package is installed (or `backend` is not one
    of Keras's; the parser reports that), else the error message."""
    if backend not in BACKEND_PACKAGES:
        return None
    package, extra = BACKEND_PACKAGES[backend]
    if find_spec(package) is not None:
        return None
    return (
        f"the Keras backend is {backend!r} (KERAS_BACKEND or --backend), "
        f"which needs the {package} package, not installed here; install "
        f"it with `pip install 'keras-sam[{extra}]'` (from a clone: "
        f"`pip install -e '.[{extra}]'`) or choose another --backend"
    )


def quiet_native_stderr():
    """Points file descriptor 2 at /dev/null and `sys.stderr` at a copy
    of the old one: native libraries' logs vanish, Python's stay."""
    sys.stderr.flush()
    python_stderr = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = python_stderr


# Arguments that only ask for help or the version (with command names).
_HELP_ONLY = {
    "-h", "--help", "--version", "demo", "sweep", "reproduce", "landscape",
}


def answer_without_keras(argv):
    """Prints `--help` or `--version` (or the missing-command error) with
    the parser loaded from `keras_sam/experiments/cli/` but without
    running `keras_sam/__init__.py`, which imports Keras and its backend
    (seconds, and TensorFlow's logs). Exits there; returns only when
    `argv` asks for more, or if the parser cannot be loaded that way."""
    if not set(argv) <= _HELP_ONLY:
        return
    spec = importlib.util.find_spec("keras_sam")
    if spec is None or spec.origin is None:
        return
    package = types.ModuleType("keras_sam")
    package.__path__ = list(spec.submodule_search_locations)
    package.__version__ = _version(spec.origin)
    sys.modules["keras_sam"] = package
    try:
        from keras_sam.experiments.cli import build_parser

        parser = build_parser()
    except Exception:  # noqa: BLE001 - fall back to the full import
        for name in [m for m in sys.modules
                     if m == "keras_sam" or m.startswith("keras_sam.")]:
            del sys.modules[name]
        return
    parser.parse_args(argv)  # exits: help, version or a usage error


def _version(init_path):
    with open(init_path) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == "__version__"
                for target in node.targets
            ):
                return node.value.value
    return "unknown"


def main(argv=None):
    """Runs `keras-sam ARGS`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    native_logs = "--tf-logs" in argv
    argv = [a for a in argv if a != "--tf-logs"]
    answer_without_keras(argv)
    backend = requested_backend(argv)
    if backend in BACKEND_PACKAGES:
        os.environ["KERAS_BACKEND"] = backend
    message = missing_backend(os.environ.get("KERAS_BACKEND", "tensorflow"))
    if message is not None:
        print(f"keras-sam: error: {message}", file=sys.stderr)
        return 2
    if not native_logs:
        quiet_native_stderr()
    from keras_sam.experiments import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
