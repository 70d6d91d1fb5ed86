"""`keras-sam reproduce`: its options and what it runs."""

from keras_sam.experiments.cli import _arguments


def add_command(subparsers, common):
    """Declares `keras-sam reproduce` and its options.

    A flat list of `add_argument` calls, in the order `--help` shows them:
    long, but with nothing to split.
    """
    parser = _arguments.add_training_parser(
        subparsers,
        common,
        "reproduce",
        model_help="the paper's: wrn-28-10, shake-shake-26-2x96d, "
        "pyramidnet-272-200, pyramidnet-272-200-shakedrop; or "
        + _arguments.MODEL_HELP
        + " (default: wrn-28-10; --quick: small-cnn)",
        help="reproduce a row of the SAM paper's CIFAR or ImageNet table",
        description=(
            "The SAM paper's protocol for one row of Table 1 (defaults "
            "are the paper's: WRN-28-10, basic augmentation, 200 epochs, "
            "batch 256, SGD with Nesterov momentum 0.9, cosine schedule "
            "from 0.1, coupled L2 5e-4, rho chosen from "
            "0.01,0.02,0.05,0.1,0.2,0.5 on 10% of the training set held "
            "out, 5 seeds, the SGD baseline with twice the epochs) or, "
            "with --dataset imagenet2012, of Table 2 (ResNet-50, 100 "
            "epochs, batch 4096, cosine from 1.0, L2 1e-4, label smoothing "
            "0.1, rho 0.05, the baseline at the same epochs). Writes "
            "results.csv (one row per run), summary.json and table.md "
            "(means and 95% intervals next to the paper's row) into "
            "--output-dir. Finished runs are kept and the running one is "
            "backed up every epoch: the same command resumes."
        ),
    )
    _arguments.add_options(
        parser,
        (
            ("--epochs", _arguments.positive_int,
             "SAM's epochs (default: 200; imagenet2012: 100; --quick: 1)"),
            ("--seeds", _arguments.positive_int,
             "number of seeds of the final runs (default: 5; --quick: 2)"),
            ("--rho", _arguments.non_negative_float,
             "SAM radius; skips choosing it on the held-out split "
             "(imagenet2012: default 0.05, the paper's)"),
            ("--rho-grid", _arguments.float_list,
             "candidates for rho (default: 0.01,0.02,0.05,0.1,0.2,0.5)"),
            ("--select-seeds", _arguments.positive_int,
             "seeds per rho candidate (default: %(default)s)", 1),
            ("--select-epochs", _arguments.positive_int,
             "epochs of the rho-selection runs (default: --epochs)"),
            ("--batch-size", _arguments.positive_int,
             "default: 256 (imagenet2012: 4096; --quick: 128)"),
            ("--sgd-epoch-multiplier", _arguments.positive_int,
             "the SGD baseline trains this many times the epochs "
             "(default: 2; imagenet2012: 1)"),
            ("--label-smoothing", _arguments.fraction,
             "label smoothing of the cross-entropy (default: 0; "
             "imagenet2012: 0.1)"),
        ),
    )  # fmt: skip
    parser.add_argument(
        "--distribute",
        choices=("none", "mirrored", "multi-worker", "data-parallel"),
        default="none",
        help="spread each batch over devices: mirrored (TensorFlow, this "
        "host's GPUs), multi-worker (TensorFlow, hosts from TF_CONFIG), "
        "data-parallel (JAX, every device; one perturbation per device) "
        "(default: %(default)s)",
    )
    _arguments.add_run_arguments(
        parser,
        many=False,
        output_dir_help="default: "
        "keras_sam_runs/reproduce/<dataset>_<model>_<augment>",
        quick_help="small CNN on 512 of the shipped sample's images, 1 epoch, "
        "rho grid 0.05,0.1, 2 seeds (the whole path in about a minute)",
    )
    parser.set_defaults(handler=run, check=check)


def _plan(args):
    """The run's `RunConfig` (the paper's recipe where an option is not
    given) and output folder."""
    from keras_sam.experiments.config import IMAGENET_RECIPE

    quick = args.quick
    recipe = {
        "model": "wrn-28-10",
        "batch_size": 128 if quick else 256,
        "learning_rate": 0.1,
        "weight_decay": 5e-4,
        "label_smoothing": 0.0,
        "rho": None,
        "sgd_epoch_multiplier": 2,
    }
    if args.dataset == _arguments.IMAGENET:
        recipe = dict(IMAGENET_RECIPE)
        args.epochs = args.epochs or recipe.pop("epochs")
    given = {
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "rho": args.rho,
        "sgd_epoch_multiplier": args.sgd_epoch_multiplier,
    }
    settings = {
        key: recipe[key] if given[key] is None else given[key]
        for key in given
    }
    config = _arguments.run_config(
        args,
        recipe["model"],
        seeds=args.seeds or (2 if quick else 5),
        rho_grid=tuple(
            args.rho_grid
            or ((0.05, 0.1) if quick else _arguments.PAPER_RHO_GRID)
        ),
        select_seeds=args.select_seeds,
        select_epochs=args.select_epochs,
        distribute=args.distribute,
        **settings,
    )
    output_dir = _arguments.output_dir(
        args,
        "reproduce",
        f"{config.dataset}_{config.model}_{config.augment}",
    )
    return config, output_dir


def check(args):
    """The usage error `argparse` cannot see, else `None` (no Keras)."""
    problem = _arguments.augment_error(args.augment)
    if problem is not None:
        return problem
    config, output_dir = _plan(args)
    return _arguments.check_run(
        args, config, output_dir, needs_validation=config.rho is None
    ) or _arguments.missing_packages(("PIL",))


def run(args):
    """Runs `keras-sam reproduce`; returns the exit status."""
    config, output_dir = _plan(args)
    from keras_sam.experiments import reproduce

    try:
        result = reproduce.run_reproduction(output_dir, config)
    except (ValueError, FileNotFoundError) as error:
        return _arguments.error("reproduce", error)
    print()
    print(result["paths"]["table"].read_text())
    _arguments.print_paths(result["paths"])
    return 0
