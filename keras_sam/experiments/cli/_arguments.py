"""Arguments and helpers shared by the `keras-sam` subcommands (private).

The parser class (`Parser`: a usage error is one line), the argument
types (`positive_int`, `float_list`, ...), `add_options` (a subcommand's
typed options from a table), the option groups that several
subcommands declare (`--backend`; the data; the recipe), `run_config`,
which turns the options of `sweep` and `reproduce` into the `RunConfig`
handed down to the experiment, and the checks made before anything is
imported or written (`augment_error`, `check_run`, `check_writable`,
`missing_backend`, `missing_packages`). Nothing here imports Keras: the
`keras-sam` command answers usage errors before importing it.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import shlex
import sys
import tempfile

from keras_sam._model_names import MODEL_NAMES, check_model_name

BACKENDS = ("tensorflow", "jax", "torch")
DATASETS = ("cifar10", "cifar100", "imagenet2012")
IMAGENET = "imagenet2012"
SOURCES = ("auto", "npz", "folder", "tfds", "sample")
# Only what runs: Keras 3 has no AutoAugment layer, so the paper's "AA"
# rows cannot be reproduced and `autoaugment` is not offered.
AUGMENTS = ("basic", "cutout", "randaugment", "none")
MODEL_HELP = (
    f"one of {', '.join(MODEL_NAMES)} (the ImageNet bottleneck ResNets), "
    "or resnet-<6n+2>, wrn-<6n+4>-<k>, "
    "preact-resnet-<18|34>, shake-shake-<6n+2>-2x<width>d, "
    "pyramidnet-<9n+2>-<alpha>[-shakedrop]"
)
# The SAM paper's rho grid (`keras_sam.experiments.config.PAPER_RHO_GRID`,
# repeated so that parsing the arguments imports no Keras).
PAPER_RHO_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

# The package of each Keras backend, and the setup.cfg extra that has it.
BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow", "cpu"),
    "jax": ("jax", "jax", "jax"),
    "torch": ("torch", "torch", "torch"),
}
# The application's packages (setup.cfg's `experiments` extra): the
# module each is imported as, and its distribution's name.
EXPERIMENTS_PACKAGES = {
    "PIL": "Pillow",
    "matplotlib": "matplotlib",
    "keras_tuner": "keras-tuner",
    "sklearn": "scikit-learn",
    "tensorboard": "tensorboard",
}
EXPERIMENTS_INSTALL = (
    "`pip install 'keras-sam[experiments]'` (from a clone: "
    "`pip install -e '.[experiments]'`)"
)


class Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line,
    `keras-sam COMMAND: error: MESSAGE` (exit status 2), without the
    usage text that `--help` shows."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def backend_in_effect(backend):
    """The Keras backend a command runs on: `--backend`, else
    `KERAS_BACKEND`, else the `backend` of Keras' `keras.json`, else
    `"tensorflow"`, Keras' default (read without importing Keras)."""
    if backend is not None:
        return backend
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    keras_dir = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    try:
        with open(os.path.join(keras_dir, "keras.json")) as f:
            return json.load(f).get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_backend(backend):
    """`None` if the backend's package is installed (or the backend is
    not one of Keras's: Keras reports that), else the error message.

    Args:
        backend: the `--backend` option, or `None` when not given.
    """
    name = backend_in_effect(backend)
    if name not in BACKEND_PACKAGES:
        return None
    module, distribution, extra = BACKEND_PACKAGES[name]
    if _installed(module):
        return None
    if backend is not None:
        where = f"argument --backend: {name!r} needs"
    else:
        where = (
            f"the Keras backend is {name!r} (KERAS_BACKEND, keras.json or "
            "Keras' default) and needs"
        )
    return (
        f"{where} the {module} package, not installed here; install "
        f"it with `pip install {distribution}` (or `pip install "
        f"'keras-sam[{extra}]'`; from a clone: `pip install -e "
        f"'.[{extra}]'`)"
        + ("" if backend is not None else " or choose another --backend")
    )


def missing_packages(modules):
    """`None` if `modules` (keys of `EXPERIMENTS_PACKAGES`) can all be
    imported, else the error naming the missing ones and the install
    command of the `experiments` extra."""
    missing = [
        EXPERIMENTS_PACKAGES[module]
        for module in modules
        if not _installed(module)
    ]
    if not missing:
        return None
    return (
        f"needs {', '.join(missing)}, not installed here: the command "
        "line's packages come with the experiments extra, "
        f"{EXPERIMENTS_INSTALL}"
    )


def common_arguments():
    """Options shared by every subcommand."""
    common = Parser(add_help=False)
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


def _add_data_arguments(parser):
    """`--dataset`, `--data-dir`, `--source`, `--augment`, the subsets
    and the held-out split."""
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="cifar10",
        help="default: %(default)s (imagenet2012: reproduce only, the "
        "paper's Table 2 recipe)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help=(
            "folder with train.npz/test.npz (JPEG npz), an image folder "
            "tree {train,test}/<class>/ (imagenet2012: train/, val/), or a "
            "tfds data directory (default: tfds' own; --quick: the shipped "
            "sample)"
        ),
    )
    parser.add_argument(
        "--manual-dir",
        default=None,
        help="imagenet2012 from tfds: the folder of the ILSVRC-2012 tar "
        "files to prepare it from (default: tfds' <data-dir>/downloads/"
        "manual)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="imagenet2012: side of the network's input (default: 224)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=None,
        help="where to read the data from (default: auto, trying npz, "
        "folder, then tfds)",
    )
    parser.add_argument(
        "--augment",
        choices=AUGMENTS,
        default="basic",
        help=(
            "basic: 4-pixel pad, random crop, flip; cutout: basic + 16x16 "
            "cutout; randaugment: basic + Keras RandAugment + cutout "
            "(default: %(default)s; the paper's AutoAugment is not in "
            "Keras 3)"
        ),
    )
    parser.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        help="class-balanced subset of the training images (default: all)",
    )
    parser.add_argument(
        "--test-size",
        type=positive_int,
        default=None,
        help="class-balanced subset of the test images (default: all)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=fraction,
        default=0.1,
        help="training images held out for the objective (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--split-seed",
        type=integer,
        default=0,
        help="seed of the subsets and of the held-out split (default: 0)",
    )


def _add_recipe_arguments(parser, many):
    """Optimizer settings; `many`: lists to search (sweep)."""
    kind = float_list if many else non_negative_float
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
        type=non_negative_float,
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
    add_verbose_argument(parser)


def add_verbose_argument(parser):
    """`--verbose`: Keras `fit` verbosity."""
    parser.add_argument(
        "--verbose",
        type=integer,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity; 1 shows progress bars (default: 1)",
    )


def add_options(parser, options):
    """Declares `options`, each `(flag, type, help)` (default `None`) or
    `(flag, type, help, default)`, in this order."""
    for flag, kind, help, *default in options:
        parser.add_argument(
            flag, type=kind, default=default[0] if default else None, help=help
        )


def add_training_parser(subparsers, common, name, model_help, **kwargs):
    """A sweep or reproduce subparser with the data options and `--model`."""
    parser = subparsers.add_parser(name, parents=[common], **kwargs)
    _add_data_arguments(parser)
    parser.add_argument("--model", default=None, help=model_help)
    return parser


def add_run_arguments(parser, many, output_dir_help, quick_help):
    """`--output-dir`, the recipe options and `--quick`, in this order."""
    parser.add_argument("--output-dir", default=None, help=output_dir_help)
    _add_recipe_arguments(parser, many=many)
    parser.add_argument("--quick", action="store_true", help=quick_help)


def run_config(args, model, **settings):
    """The `RunConfig` of a `sweep` or `reproduce` command line.

    The data options, `--model` (else the small CNN under `--quick`, else
    `model`), `--epochs` (else 1 under `--quick`, else 200), the recipe
    options the two commands share, `--verbose` and the command line;
    then `settings`, the command's own.
    """
    from keras_sam.experiments.config import RunConfig

    quick = args.quick
    return RunConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        source=_source(args),
        model=args.model or ("small-cnn" if quick else model),
        augment=args.augment,
        image_size=args.image_size,
        epochs=args.epochs or (1 if quick else 200),
        momentum=args.momentum,
        nesterov=args.nesterov,
        validation_fraction=args.validation_fraction,
        train_size=args.train_size or (512 if quick else None),
        test_size=args.test_size or (256 if quick else None),
        split_seed=args.split_seed,
        mixed_precision=args.mixed_precision,
        verbose=args.verbose,
        command=command_line(args.argv),
        **settings,
    )


def augment_error(augment):
    """The error of `--augment` that `data_pipeline.check_augment` finds,
    else `None`."""
    from keras_sam.experiments import data_pipeline

    try:
        data_pipeline.check_augment(augment)
    except ValueError as error:
        return str(error)
    return None


def check_run(args, config, output_dir, needs_validation):
    """Checks a `sweep` or `reproduce` run before anything is written.

    Args:
        args: the parsed arguments.
        config: the run's `RunConfig`.
        output_dir: the folder the run will write.
        needs_validation: whether the run needs held-out images (a sweep's
            objective; `reproduce` choosing `rho`).

    Returns:
        `None`, or the error message: one line naming the option and the
        value.
    """
    from keras_sam.experiments import datasets

    try:
        check_model_name(config.model)
    except ValueError as error:
        return f"argument --model: {error}"
    problem = _check_imagenet(args, config)
    if problem is not None:
        return problem
    if config.source == "sample" and config.dataset != "cifar10":
        return (
            f"argument --dataset: {config.dataset!r} needs --data-dir (or "
            "--source tfds): the sample shipped with keras-sam, used by "
            "--quick and --source sample, holds CIFAR-10 only"
        )
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        if not os.path.exists(config.data_dir):
            problem = "no such folder"
        else:
            problem = "not a folder"
        if config.source != "tfds":
            return (
                f"argument --data-dir: {problem}: {config.data_dir!r} "
                "(with --source tfds, tfds downloads into a new folder)"
            )
    if needs_validation and not config.validation_fraction:
        what = (
            "a sweep ranks its trials"
            if args.command == "sweep"
            else ("choosing rho (no --rho given) ranks the candidates")
        )
        return (
            f"argument --validation-fraction: {what} on held-out images and "
            "needs a fraction in (0, 1), got "
            f"{config.validation_fraction:g}"
        )
    if needs_validation and config.train_size is not None:
        smallest = datasets.minimum_train_size(config.validation_fraction)
        if config.train_size < smallest:
            held_out = round(config.validation_fraction * config.train_size)
            return (
                f"argument --train-size: the training set is too small for "
                f"the validation split: --validation-fraction "
                f"{config.validation_fraction:g} of {config.train_size} "
                f"images holds out {held_out}; use --train-size {smallest} "
                "or more"
            )
    return check_writable(output_dir)


def _check_imagenet(args, config):
    """The error of ImageNet options on the wrong dataset or command."""
    if config.dataset != IMAGENET:
        for option, value in (("--image-size", config.image_size),
                              ("--manual-dir", config.manual_dir)):
            if value is not None:
                return (
                    f"argument {option}: only for --dataset imagenet2012, "
                    f"got --dataset {config.dataset}"
                )
        return None
    if args.command != "reproduce":
        return (
            f"argument --dataset: imagenet2012 is for keras-sam reproduce "
            f"(Table 2), not {args.command}"
        )
    if args.quick:
        return (
            "argument --quick: the sample shipped with keras-sam is "
            "CIFAR-10; for imagenet2012 give --data-dir (and small "
            "--train-size, --test-size, --image-size for a short run)"
        )
    if config.source not in ("auto", "folder", "tfds"):
        return (
            f"argument --source: {config.source!r} is not an imagenet2012 "
            "source; use auto, folder or tfds"
        )
    if config.data_dir is None:
        return (
            "argument --data-dir: imagenet2012 needs one: an image folder "
            "tree train/<class>/, val/<class>/ or a tfds data directory "
            "(tfds cannot download ImageNet)"
        )
    if config.augment not in ("basic", "none"):
        return (
            f"argument --augment: {config.augment!r} is not offered for "
            "imagenet2012; basic is the Inception-style crop and flip"
        )
    return None


def check_writable(output_dir):
    """`None` if `output_dir` can be made and written, else the error."""
    path = pathlib.Path(output_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return (
            f"argument --output-dir: cannot make {str(output_dir)!r}: "
            f"{str(existing)!r} is a file, not a folder"
        )
    try:
        # A probe file, deleted on closing: the check leaves nothing.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return (
            f"argument --output-dir: cannot write to {str(output_dir)!r} "
            f"({error.strerror or error})"
        )
    return None


def output_dir(args, command, name):
    """`--output-dir`, else `keras_sam_runs/<command>/<name>`."""
    return args.output_dir or os.path.join("keras_sam_runs", command, name)


def error(command, message):
    """Prints `message` as an error of `command`; returns exit status 2."""
    print(f"keras-sam {command}: error: {message}", file=sys.stderr)
    return 2


def print_paths(paths):
    """Prints one `name: path` line per written file."""
    for name, path in paths.items():
        print(f"{name}: {path}")


def _source(args):
    if args.source is not None:
        return args.source
    if args.quick and args.data_dir is None:
        return "sample"
    return "auto"


def _number(text, kind):
    """`kind(text)`, or the argparse error saying what was expected."""
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(
            f"expected {expected}, got {text!r}"
        ) from None


def _list(text, kind):
    expected = "integers" if kind is int else "numbers"
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated {expected}, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated {expected}, got {text!r}"
        )
    return values


def _checked_list(kind, ok, expected):
    """The argument type of comma-separated `kind` values that all pass
    `ok`, else the argparse error `expected ..., got ...`."""

    def parse(text):
        values = _list(text, kind)
        if not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(
                f"expected {expected}, got {text!r}"
            )
        return values

    return parse


float_list = _checked_list(
    float, lambda v: v >= 0 and v != float("inf"), "finite numbers >= 0"
)
int_list = _checked_list(int, lambda v: v >= 0, "integers >= 0")
positive_int_list = _checked_list(int, lambda v: v >= 1, "integers >= 1")


def fraction(text):
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def positive_int(text):
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def integer(text):
    return _number(text, int)


def non_negative_float(text):
    value = _number(text, float)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a finite number >= 0, got {text}"
        )
    return value


def command_line(argv):
    return shlex.join(["keras-sam", *argv])
