"""`keras-sam sweep`: its options and what it runs."""

import json

from keras_sam.experiments.cli import _arguments

TUNERS = ("grid", "random", "bayesian")


def add_command(subparsers, common):
    """Declares `keras-sam sweep` and its options."""
    parser = _arguments.add_training_parser(
        subparsers,
        common,
        "sweep",
        model_help=_arguments.MODEL_HELP
        + " (default: resnet-20; --quick: small-cnn)",
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
    _arguments.add_options(
        parser,
        (
            ("--rho", _arguments.float_list, "comma-separated values "
             "(default: 0 and the paper's grid 0.01,0.02,0.05,0.1,0.2,0.5)"),
            ("--batch-size", _arguments.positive_int_list,
             "comma-separated values (default: 256)"),
            ("--epochs", _arguments.positive_int, "default: 200"),
            ("--seeds", _arguments.int_list,
             "seeds of every trial, comma-separated (default: 0)"),
        ),
    )  # fmt: skip
    parser.add_argument(
        "--tuner",
        choices=TUNERS,
        default="grid",
        help="search algorithm (default: %(default)s)",
    )
    parser.add_argument(
        "--max-trials", type=_arguments.positive_int, default=None,
        help="trial budget (required for random and bayesian)",
    )  # fmt: skip
    parser.add_argument(
        "--no-test",
        dest="evaluate_test",
        action="store_false",
        help="do not measure the test error of each trial",
    )
    _arguments.add_run_arguments(
        parser,
        many=True,
        output_dir_help="default: keras_sam_runs/sweep/<dataset>_<model>",
        quick_help="small CNN on 512 images of the shipped sample, 1 epoch, "
        "rho 0,0.05, batch 64,128 (runs the whole path in about a minute)",
    )
    parser.set_defaults(handler=run, check=check)


def _plan(args):
    """The run's `RunConfig` and output folder."""
    config = _arguments.run_config(args, "resnet-20")
    output_dir = _arguments.output_dir(
        args, "sweep", f"{config.dataset}_{config.model}"
    )
    return config, output_dir


def _packages(args):
    """The modules a sweep imports beyond the library."""
    packages = ["PIL", "matplotlib", "keras_tuner"]
    if args.tuner == "bayesian":
        packages.append("sklearn")
    if _arguments.backend_in_effect(args.backend) == "tensorflow":
        # KerasTuner imports tensorboard in every trial on TensorFlow.
        packages.append("tensorboard")
    return packages


def check(args):
    """The usage error `argparse` cannot see, else `None` (no Keras)."""
    problem = _arguments.augment_error(args.augment)
    if problem is not None:
        return problem
    if args.tuner != "grid" and args.max_trials is None:
        return f"argument --max-trials: --tuner {args.tuner} needs it"
    config, output_dir = _plan(args)
    return _arguments.check_run(
        args, config, output_dir, needs_validation=True
    ) or _arguments.missing_packages(_packages(args))


def run(args):
    """Runs `keras-sam sweep`; returns the exit status."""
    quick = args.quick
    config, output_dir = _plan(args)

    from keras_sam.experiments import sweep, tuning

    space = tuning.SearchSpace(
        rho_values=tuple(
            args.rho
            or ((0.0, 0.05) if quick else (0.0, *_arguments.PAPER_RHO_GRID))
        ),
        batch_sizes=tuple(args.batch_size or ((64, 128) if quick else (256,))),
        learning_rates=tuple(args.learning_rate or (0.1,)),
        weight_decays=tuple(args.weight_decay or (5e-4,)),
    )
    try:
        result = sweep.run_sweep(
            output_dir,
            config,
            space,
            seeds=tuple(args.seeds or (0,)),
            tuner=args.tuner,
            max_trials=args.max_trials,
            evaluate_test=args.evaluate_test,
        )
    except (ValueError, FileNotFoundError) as error:
        return _arguments.error("sweep", error)
    if result["rows"] is None:
        print("Worker finished; the chief writes the results.")
        return 0
    print()
    print(f"Best: {json.dumps(result['best'])}")
    _arguments.print_paths(result["paths"])
    return 0
