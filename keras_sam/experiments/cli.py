"""The `keras-sam` command line.

```
keras-sam demo [--quick] [--epochs N] [--output-dir DIR] [--backend NAME]
keras-sam sweep [--quick] [--model NAME] [--rho LIST] [--batch-size LIST] ...
keras-sam reproduce [--quick] [--dataset NAME] [--model NAME] [--augment NAME]
                    [--epochs N] [--seeds N] [--rho X] ...
```

Each subcommand is one `_add_<name>_command(subparsers, common)` function
that declares its arguments and sets `handler`, a function of the parsed
arguments returning the exit status. Handlers import Keras (and anything
that imports it) only inside their body, after `--backend` has been
applied, because Keras fixes its backend when first imported.
"""

import argparse
import json
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
    from keras_sam.experiments import demo

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
    _print_paths(result["paths"])
    return 0


# sweep and reproduce ------------------------------------------------------

_DATASETS = ("cifar10", "cifar100")
_SOURCES = ("auto", "npz", "folder", "tfds", "sample")
_AUGMENTS = ("basic", "cutout", "randaugment", "autoaugment", "none")
_TUNERS = ("grid", "random", "bayesian")
_PAPER_RHO_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _add_data_arguments(parser):
    parser.add_argument(
        "--dataset",
        choices=_DATASETS,
        default="cifar10",
        help="default: %(default)s",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help=(
            "folder with train.npz/test.npz (JPEG npz), an image folder "
            "tree {train,test}/<class>/, or a tfds data directory "
            "(default: tfds' own; --quick: the shipped sample)"
        ),
    )
    parser.add_argument(
        "--source",
        choices=_SOURCES,
        default=None,
        help="where to read the data from (default: auto, trying npz, "
        "folder, then tfds)",
    )
    parser.add_argument(
        "--augment",
        choices=_AUGMENTS,
        default="basic",
        help=(
            "basic: 4-pixel pad, random crop, flip; cutout: basic + 16x16 "
            "cutout; randaugment: basic + Keras RandAugment + cutout "
            "(default: %(default)s; autoaugment is not in Keras 3)"
        ),
    )
    parser.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="class-balanced subset of the training images (default: all)",
    )
    parser.add_argument(
        "--test-size",
        type=_positive_int,
        default=None,
        help="class-balanced subset of the test images (default: all)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=0.1,
        help="training images held out for the objective (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the subsets and of the held-out split (default: 0)",
    )


def _add_recipe_arguments(parser, many):
    """Optimizer settings; `many`: lists to search (sweep)."""
    kind = _float_list if many else _non_negative_float
    parser.add_argument(
        "--learning-rate",
        type=kind,
        default=None,
        help="peak of the cosine schedule (default: 0.1)",
    )
    parser.add_argument(
        "--weight-decay",
        type=kind,
        default=None,
        help="coupled L2: gradient weight_decay * w (default: 5e-4)",
    )
    parser.add_argument(
        "--momentum",
        type=_non_negative_float,
        default=0.9,
        help="SGD momentum (default: %(default)s)",
    )
    parser.add_argument(
        "--no-nesterov",
        dest="nesterov",
        action="store_false",
        help="plain instead of Nesterov momentum",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("bfloat16", "float16"),
        default=None,
        help="train under Keras' mixed_<dtype> policy (GPU; default: float32)",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity; 1 shows progress bars (default: 1)",
    )


def _add_training_parser(subparsers, common, name, model_help, **kwargs):
    """A sweep or reproduce subparser with the data options and `--model`."""
    parser = subparsers.add_parser(name, parents=[common], **kwargs)
    _add_data_arguments(parser)
    parser.add_argument("--model", default=None, help=model_help)
    return parser


def _add_run_arguments(parser, many, output_dir_help, quick_help):
    """`--output-dir`, the recipe options and `--quick`, in this order."""
    parser.add_argument("--output-dir", default=None, help=output_dir_help)
    _add_recipe_arguments(parser, many=many)
    parser.add_argument("--quick", action="store_true", help=quick_help)


def _add_sweep_command(subparsers, common):
    parser = _add_training_parser(
        subparsers,
        common,
        "sweep",
        model_help="default: resnet-20 (--quick: small-cnn)",
        help="KerasTuner sweep over rho and batch size on CIFAR",
        description=(
            "Train the model once per trial and seed with the SAM paper's "
            "recipe, searching rho (0 = plain SGD) and batch size (and the "
            "learning rate and weight decay if given several values) by "
            "accuracy on the held-out split. Writes trials.csv (one row "
            "per trial and seed), best.json and sweep.png (test error "
            "against rho per batch size) into --output-dir; the raw tuner "
            "state in its tuner/ folder lets the same command resume. With "
            "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
            "KERASTUNER_ORACLE_PORT set, runs as the chief or a worker of "
            "a distributed search."
        ),
    )
    parser.add_argument(
        "--rho",
        type=_float_list,
        default=None,
        help="comma-separated values (default: 0 and the paper's grid "
        "0.01,0.02,0.05,0.1,0.2,0.5)",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_list,
        default=None,
        help="comma-separated values (default: 256)",
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=None, help="default: 200"
    )
    parser.add_argument(
        "--seeds",
        type=_int_list,
        default=None,
        help="seeds of every trial, comma-separated (default: 0)",
    )
    parser.add_argument(
        "--tuner",
        choices=_TUNERS,
        default="grid",
        help="search algorithm (default: %(default)s)",
    )
    parser.add_argument(
        "--max-trials",
        type=_positive_int,
        default=None,
        help="trial budget (required for random and bayesian)",
    )
    parser.add_argument(
        "--no-test",
        dest="evaluate_test",
        action="store_false",
        help="do not measure the test error of each trial",
    )
    _add_run_arguments(
        parser,
        many=True,
        output_dir_help="default: keras_sam_runs/sweep/<dataset>_<model>",
        quick_help="small CNN on 512 images of the shipped sample, 1 epoch, "
        "rho 0,0.05, batch 64,128 (runs the whole path in about a minute)",
    )
    parser.set_defaults(handler=_run_sweep)


def _run_sweep(args):
    from keras_sam.experiments import data_pipeline

    quick = args.quick
    model = _model_name(args, default="resnet-20")
    options = {
        **_training_options(args, model),
        "rho_values": tuple(
            args.rho or ((0.0, 0.05) if quick else (0.0, *_PAPER_RHO_GRID))
        ),
        "batch_sizes": tuple(
            args.batch_size or ((64, 128) if quick else (256,))
        ),
        "learning_rates": tuple(args.learning_rate or (0.1,)),
        "weight_decays": tuple(args.weight_decay or (5e-4,)),
        "seeds": tuple(args.seeds or (0,)),
        "tuner": args.tuner,
        "max_trials": args.max_trials,
        "evaluate_test": args.evaluate_test,
    }
    try:
        data_pipeline.check_augment(args.augment)
        if args.tuner != "grid" and args.max_trials is None:
            raise ValueError(f"--tuner {args.tuner} needs --max-trials.")
    except ValueError as error:
        return _error("sweep", error)
    output_dir = _output_dir(args, "sweep", f"{args.dataset}_{model}")

    from keras_sam.experiments import sweep

    result = sweep.run_sweep(output_dir, **options)
    if result["rows"] is None:
        print("Worker finished; the chief writes the results.")
        return 0
    print()
    print(f"Best: {json.dumps(result['best'])}")
    _print_paths(result["paths"])
    return 0


def _add_reproduce_command(subparsers, common):
    parser = _add_training_parser(
        subparsers,
        common,
        "reproduce",
        model_help="wrn-28-10, shake-shake-26-2x96d, pyramidnet-272-200, "
        "pyramidnet-272-200-shakedrop, or any keras_sam.models name "
        "(default: wrn-28-10; --quick: small-cnn)",
        help="reproduce a row of the SAM paper's CIFAR table",
        description=(
            "The SAM paper's protocol for one row of Table 1 (defaults "
            "are the paper's: WRN-28-10, basic augmentation, 200 epochs, "
            "batch 256, SGD with Nesterov momentum 0.9, cosine schedule "
            "from 0.1, coupled L2 5e-4, rho chosen from "
            "0.01,0.02,0.05,0.1,0.2,0.5 on 10%% of the training set held "
            "out, 5 seeds, the SGD baseline with twice the epochs). Writes "
            "results.csv (one row per run), summary.json and table.md "
            "(means and 95%% intervals next to the paper's row) into "
            "--output-dir. Finished runs are kept and the running one is "
            "backed up every epoch: the same command resumes."
        ),
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="SAM's epochs (default: 200; --quick: 1)",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        help="number of seeds of the final runs (default: 5; --quick: 2)",
    )
    parser.add_argument(
        "--rho",
        type=_non_negative_float,
        default=None,
        help="SAM radius; skips choosing it on the held-out split",
    )
    parser.add_argument(
        "--rho-grid",
        type=_float_list,
        default=None,
        help="candidates for rho (default: 0.01,0.02,0.05,0.1,0.2,0.5)",
    )
    parser.add_argument(
        "--select-seeds",
        type=_positive_int,
        default=1,
        help="seeds per rho candidate (default: %(default)s)",
    )
    parser.add_argument(
        "--select-epochs",
        type=_positive_int,
        default=None,
        help="epochs of the rho-selection runs (default: --epochs)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="default: 256 (--quick: 128)",
    )
    parser.add_argument(
        "--sgd-epoch-multiplier",
        type=_positive_int,
        default=2,
        help="the SGD baseline trains this many times the epochs "
        "(default: %(default)s)",
    )
    _add_run_arguments(
        parser,
        many=False,
        output_dir_help="default: "
        "keras_sam_runs/reproduce/<dataset>_<model>_<augment>",
        quick_help="small CNN on 512 of the shipped sample's images, 1 epoch, "
        "rho grid 0.05,0.1, 2 seeds (the whole path in about a minute)",
    )
    parser.set_defaults(handler=_run_reproduce)


def _run_reproduce(args):
    from keras_sam.experiments import data_pipeline

    quick = args.quick
    model = _model_name(args, default="wrn-28-10")
    try:
        data_pipeline.check_augment(args.augment)
    except ValueError as error:
        return _error("reproduce", error)
    options = {
        **_training_options(args, model),
        "seeds": args.seeds or (2 if quick else 5),
        "rho": args.rho,
        "rho_grid": tuple(
            args.rho_grid or ((0.05, 0.1) if quick else _PAPER_RHO_GRID)
        ),
        "select_seeds": args.select_seeds,
        "select_epochs": args.select_epochs,
        "batch_size": args.batch_size or (128 if quick else 256),
        "learning_rate": 0.1
        if args.learning_rate is None
        else args.learning_rate,
        "weight_decay": 5e-4
        if args.weight_decay is None
        else args.weight_decay,
        "sgd_epoch_multiplier": args.sgd_epoch_multiplier,
    }
    if options["rho"] is None and not options["validation_fraction"]:
        return _error(
            "reproduce",
            "choosing rho needs --validation-fraction > 0 (or give --rho).",
        )
    output_dir = _output_dir(
        args, "reproduce", f"{args.dataset}_{model}_{args.augment}"
    )
    from keras_sam.experiments import reproduce

    try:
        result = reproduce.run_reproduction(output_dir, **options)
    except ValueError as error:
        return _error("reproduce", error)
    print()
    print(result["paths"]["table"].read_text())
    _print_paths(result["paths"])
    return 0


def _model_name(args, default):
    """`--model`, else the small CNN under `--quick`, else `default`."""
    return args.model or ("small-cnn" if args.quick else default)


def _training_options(args, model):
    """The keyword arguments that sweep and reproduce share."""
    quick = args.quick
    return {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "source": _source(args),
        "model_name": model,
        "augment": args.augment,
        "epochs": args.epochs or (1 if quick else 200),
        "momentum": args.momentum,
        "nesterov": args.nesterov,
        "validation_fraction": args.validation_fraction,
        "train_size": args.train_size or (512 if quick else None),
        "test_size": args.test_size or (256 if quick else None),
        "split_seed": args.split_seed,
        "mixed_precision": args.mixed_precision,
        "verbose": args.verbose,
        "command": _command_line(args.argv),
    }


def _output_dir(args, command, name):
    """`--output-dir`, else `keras_sam_runs/<command>/<name>`."""
    return args.output_dir or os.path.join("keras_sam_runs", command, name)


def _error(command, message):
    """Prints `message` as an error of `command`; returns exit status 2."""
    print(f"keras-sam {command}: error: {message}", file=sys.stderr)
    return 2


def _print_paths(paths):
    """Prints one `name: path` line per written file."""
    for name, path in paths.items():
        print(f"{name}: {path}")


def _source(args):
    if args.source is not None:
        return args.source
    if args.quick and args.data_dir is None:
        return "sample"
    return "auto"


def _float_list(text):
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not v >= 0 or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(
            f"expected finite numbers >= 0, got {text!r}"
        )
    return values


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected integers >= 0, got {text!r}"
        )
    return values


def _fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


_COMMANDS = (_add_demo_command, _add_sweep_command, _add_reproduce_command)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    status = _use_backend(args.backend, argv)
    if status is not None:
        return status
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
