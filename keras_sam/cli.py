"""The `keras-sam` command line.

```
keras-sam demo [--quick] [--epochs N] [--output-dir DIR] [--backend NAME]
```

Each subcommand is one `_add_<name>_command(subparsers, common)` function
that declares its arguments and sets `handler`, a function of the parsed
arguments returning the exit status. Handlers import Keras (and anything
that imports it) only inside their body, after `--backend` has been
applied, because Keras fixes its backend when first imported.
"""

import argparse
import os
import shlex
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")
_REEXEC_MARKER = "KERAS_SAM_BACKEND_REEXEC"


def _common_arguments():
    """Options shared by every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help=(
            "Keras backend to run on (sets KERAS_BACKEND before Keras is "
            "imported). Defaults to $KERAS_BACKEND, else Keras' own default."
        ),
    )
    return common


def _add_demo_command(subparsers, common):
    parser = subparsers.add_parser(
        "demo",
        parents=[common],
        help="train a small CNN with SGD and with SAM on the shipped sample",
        description=(
            "Train the same small CNN (same initial weights, same data "
            "order) with SGD with momentum and with SAMModel on the "
            "CIFAR-10 sample shipped with keras-sam (5,000 train / 1,000 "
            "test images), then print a side-by-side table and write "
            "history.csv, summary.json and curves.png. About 3-4 minutes on "
            "two CPU cores at the defaults."
        ),
    )
    parser.add_argument(
        "--output-dir",
        default=os.path.join("keras_sam_runs", "demo"),
        help="folder for the results (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=None, help="default: 10"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=128,
        help="default: %(default)s",
    )
    parser.add_argument(
        "--learning-rate",
        type=_non_negative_float,
        default=0.05,
        help="peak of the cosine schedule, SGD momentum 0.9 (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--rho",
        type=_non_negative_float,
        default=0.05,
        help="SAM radius, also used to probe sharpness (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights and data order (default: 0)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="512 training and 256 test images, 1 epoch (for tests)",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity; 1 shows progress bars (default: 1)",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args):
    from keras_sam import demo

    options = {
        "output_dir": args.output_dir,
        "epochs": args.epochs or 10,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "rho": args.rho,
        "seed": args.seed,
        "verbose": args.verbose,
        "command": _command_line(args.argv),
    }
    if args.quick:
        options.update(
            train_size=512,
            test_size=256,
            epochs=args.epochs or 1,
            probe_batches=1,
        )
    result = demo.run_demo(**options)
    print()
    print(demo.format_table(result["summary"]))
    print()
    for name, path in result["paths"].items():
        print(f"{name}: {path}")
    return 0


_COMMANDS = (_add_demo_command,)


def build_parser():
    """The `keras-sam` argument parser, with one subparser per command."""
    from keras_sam import __version__

    parser = argparse.ArgumentParser(
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
    common = _common_arguments()
    for add_command in _COMMANDS:
        add_command(subparsers, common)
    return parser


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a finite number >= 0, got {text}"
        )
    return value


def _command_line(argv):
    return shlex.join(["keras-sam", *argv])


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
    command = [sys.executable, "-m", "keras_sam.cli", *argv]
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
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    status = _use_backend(args.backend, argv)
    if status is not None:
        return status
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
