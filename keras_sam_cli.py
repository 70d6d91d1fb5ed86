"""The `keras-sam` console command's entry point.

It runs before anything imports Keras, which fixes its backend and, on
TensorFlow, prints TensorFlow's native log lines (oneDNN, absl) on import
whatever `TF_CPP_MIN_LOG_LEVEL` says. So it applies `--backend NAME` to
`KERAS_BACKEND`, says what to install if the backend's package is
missing, sends native (C++) output on stderr to /dev/null unless
`--tf-logs` is given (Python's own errors and warnings still print), and
then runs `keras_sam.experiments.cli.main`.
"""

import importlib.util
import os
import sys

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


def main(argv=None):
    """Runs `keras-sam ARGS`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    native_logs = "--tf-logs" in argv
    argv = [a for a in argv if a != "--tf-logs"]
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
