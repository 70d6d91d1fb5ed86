"""The `keras-sam` command line.

```
keras-sam demo [--quick] [--epochs N] [--output-dir DIR] [--backend NAME]
keras-sam sweep [--quick] [--model NAME] [--rho LIST] [--batch-size LIST] ...
keras-sam reproduce [--quick] [--dataset NAME] [--model NAME] [--augment NAME]
                    [--epochs N] [--seeds N] [--rho X] ...
keras-sam landscape MODEL.keras [MODEL.keras ...] --data PROBE.npz ...
```

Each subcommand is one module of this package (`demo`, `sweep`, `reproduce`,
`landscape`) with `add_command(subparsers, common)`, which declares its
arguments and sets `check` and `handler`; `check(args)`, the usage errors
that argparse cannot see (a folder that cannot be written, an unknown
model, a missing file, a missing package), returning the one-line message
or `None`; and `run(args)`, the handler: a function of the parsed
arguments returning the exit status. `sweep` and `reproduce` turn their
arguments into one `keras_sam.experiments.config.RunConfig`
(`_arguments.run_config`) and hand it to the experiment.

Parsing and checking (`parse_arguments`) import no Keras, so that the
`keras-sam` command answers a usage error as fast as `--help`, before
anything is written; handlers import Keras (and anything that imports it)
only inside their body, after `--backend` has been applied, because Keras
fixes its backend when first imported.
"""

import os
import subprocess
import sys

from keras_sam.experiments.cli import (
    _arguments,
    demo,
    landscape,
    reproduce,
    sweep,
)

BACKENDS = _arguments.BACKENDS
_REEXEC_MARKER = "KERAS_SAM_BACKEND_REEXEC"
_COMMANDS = (demo, sweep, reproduce, landscape)


def build_parser():
    """The `keras-sam` argument parser, with one subparser per command."""
    from keras_sam._version import __version__

    parser = _arguments.Parser(
        prog="keras-sam",
        description=(
            "Sharpness-Aware Minimization and stability measurement for "
            "Keras 3."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"keras-sam {__version__}"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    common = _arguments.common_arguments()
    for command in _COMMANDS:
        command.add_command(subparsers, common)
    return parser


def parse_arguments(argv):
    """Parses and checks a `keras-sam` command line without importing
    Keras or writing anything.

    Args:
        argv: the arguments, without the program name.

    Returns:
        `(args, problem)`: the parsed arguments (with `args.argv`) and
        `None`, or the one-line message of a usage error argparse cannot
        see (`_arguments.missing_backend`, the command's `check`, its
        missing packages).

    Raises:
        SystemExit: for `--help` and `--version` (status 0) and for the
            errors argparse sees (status 2, one line on stderr).
    """
    args = build_parser().parse_args(argv)
    args.argv = argv
    problem = _arguments.missing_backend(args.backend) or args.check(args)
    return args, problem


def _use_backend(backend, argv):
    """Sets KERAS_BACKEND; re-runs the command if Keras is already loaded.

    Returns `None` when this process can go on, else the exit status of
    the re-run command.
    """
    if backend is None:
        return None
    os.environ["KERAS_BACKEND"] = backend
    keras = sys.modules.get("keras")
    if keras is None or keras.backend.backend() == backend:
        return None
    # Keras was imported (by `import keras_sam`) with another backend and
    # cannot switch: run the same command in a fresh interpreter.
    if os.environ.get(_REEXEC_MARKER):
        raise RuntimeError(
            f"Could not start Keras with backend={backend!r}: it loaded "
            f"{keras.backend.backend()!r} even with KERAS_BACKEND set."
        )
    env = dict(os.environ, **{_REEXEC_MARKER: "1"})
    command = [sys.executable, "-m", "keras_sam.experiments.cli", *argv]
    return subprocess.call(command, env=env)


def main(argv=None):
    """Entry point of the `keras-sam` console command.

    Args:
        argv: the arguments, without the program name. Defaults to
            `sys.argv[1:]`.

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, problem = parse_arguments(argv)
    if problem is not None:
        return _arguments.error(args.command, problem)
    status = _use_backend(args.backend, argv)
    if status is not None:
        return status
    return args.handler(args)
