"""`keras-sam demo`: its options and what it runs."""

import argparse
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
            "CIFAR-10 sample shipped with keras-sam, with 40% of the "
            "training labels wrong (where SAM helps: plain SGD memorizes "
            "them), then print a side-by-side table and what it shows, and "
            "write history.csv, summary.json and curves.png. About 5 "
            "minutes on two CPU cores at the defaults. --noise 0: the "
            "clean-label comparison (5,000 images, 10 epochs, SAM flatter "
            "but not more accurate at this scale)."
        ),
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help=f"folder for the results (default: {FULL_OUTPUT_DIR}; "
        f"--quick: {QUICK_OUTPUT_DIR}, so a quick run never overwrites the "
        "full demo's results)",
    )
    _arguments.add_options(
        parser,
        (
            ("--noise", _arguments.fraction,
             "share of the training labels moved to a wrong class, in "
             "[0, 1); 0 trains clean labels (the comparison of earlier "
             "versions: width 16, flips, rho 0.05) (default: 0.4)"),
            ("--train-size", _train_size,
             "the first N of the sample's 5,000 training images (default: "
             "2000; --noise 0: 5000; --quick: 512)"),
            ("--epochs", _arguments.positive_int,
             "default: 20 (--noise 0: 10; --quick: 1)"),
            ("--batch-size", _arguments.positive_int,
             "default: %(default)s", 128),
            ("--learning-rate", _arguments.non_negative_float,
             "peak of the cosine schedule, SGD with Nesterov momentum 0.9 "
             "(--noise 0: plain momentum) (default: %(default)s)", 0.05),
            ("--rho", _arguments.non_negative_float,
             "SAM radius, also used to probe sharpness (default: 0.1; "
             "--noise 0: 0.05)"),
            ("--seed", _arguments.integer,
             "seed of the initial weights and data order (default: 0)", 0),
        ),
    )  # fmt: skip
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


# The training images of the shipped sample (`demo.SAMPLE_TRAIN_IMAGES`,
# repeated so that parsing the arguments imports no Keras).
SAMPLE_TRAIN_IMAGES = 5000


def _train_size(text):
    value = _arguments.positive_int(text)
    if value > SAMPLE_TRAIN_IMAGES:
        raise argparse.ArgumentTypeError(
            f"the shipped sample has {SAMPLE_TRAIN_IMAGES} training images, "
            f"got {text}"
        )
    return value


def run(args):
    """Runs `keras-sam demo`; returns the exit status."""
    from keras_sam.experiments import demo

    config, options = demo.demo_setting(args.noise)
    config = config.replace(
        epochs=args.epochs or config.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        rho=config.rho if args.rho is None else args.rho,
        train_size=args.train_size or config.train_size,
        verbose=args.verbose,
        command=_arguments.command_line(args.argv),
    )
    probe_batches = 4
    if args.quick:
        config = config.replace(
            train_size=args.train_size or 512,
            test_size=256,
            epochs=args.epochs or 1,
        )
        probe_batches = 1
    result = demo.run_demo(
        config,
        output_dir=_output_dir(args),
        seed=args.seed,
        probe_batches=probe_batches,
        **options,
    )
    print()
    print(demo.format_table(result["summary"]))
    print()
    print(demo.format_reading(result["record"]))
    print()
    _arguments.print_paths(result["paths"])
    return 0
