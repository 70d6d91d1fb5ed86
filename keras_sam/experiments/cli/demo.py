"""`keras-sam demo`: its options and what it runs."""

import os

from keras_sam.experiments.cli import _arguments

FULL_OUTPUT_DIR = os.path.join("keras_sam_runs", "demo")
QUICK_OUTPUT_DIR = os.path.join("keras_sam_runs", "demo_quick")


def add_command(subparsers, common):
    """Declares `keras-sam demo` and its options."""
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
        default=None,
        help=f"folder for the results (default: {FULL_OUTPUT_DIR}; "
        f"--quick: {QUICK_OUTPUT_DIR}, so a quick run never overwrites the "
        "full demo's results)",
    )
    parser.add_argument(
        "--epochs",
        type=_arguments.positive_int,
        default=None,
        help="default: 10",
    )
    parser.add_argument(
        "--batch-size",
        type=_arguments.positive_int,
        default=128,
        help="default: %(default)s",
    )
    parser.add_argument(
        "--learning-rate",
        type=_arguments.non_negative_float,
        default=0.05,
        help="peak of the cosine schedule, SGD momentum 0.9 (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--rho",
        type=_arguments.non_negative_float,
        default=0.05,
        help="SAM radius, also used to probe sharpness (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_arguments.integer,
        default=0,
        help="seed of the initial weights and data order (default: 0)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="512 training and 256 test images, 1 epoch (for tests)",
    )
    _arguments.add_verbose_argument(parser)
    parser.set_defaults(handler=run, check=check)


def _output_dir(args):
    return args.output_dir or (
        QUICK_OUTPUT_DIR if args.quick else FULL_OUTPUT_DIR
    )


def check(args):
    """The usage error `argparse` cannot see, else `None` (no Keras)."""
    return _arguments.check_writable(
        _output_dir(args)
    ) or _arguments.missing_packages(("PIL", "matplotlib"))


def run(args):
    """Runs `keras-sam demo`; returns the exit status."""
    from keras_sam.experiments import demo

    config = demo.DEMO_CONFIG.replace(
        epochs=args.epochs or 10,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        rho=args.rho,
        verbose=args.verbose,
        command=_arguments.command_line(args.argv),
    )
    probe_batches = 4
    if args.quick:
        config = config.replace(
            train_size=512, test_size=256, epochs=args.epochs or 1
        )
        probe_batches = 1
    result = demo.run_demo(
        config,
        output_dir=_output_dir(args),
        seed=args.seed,
        probe_batches=probe_batches,
    )
    print()
    print(demo.format_table(result["summary"]))
    print()
    _arguments.print_paths(result["paths"])
    return 0
