"""`keras-sam landscape`: its options and what it runs."""

import os
import pathlib

from keras_sam.experiments.cli import _arguments

DEFAULT_OUTPUT_DIR = os.path.join("keras_sam_runs", "landscape")


def add_command(subparsers, common):
    """Declares `keras-sam landscape` and its options."""
    parser = subparsers.add_parser(
        "landscape",
        parents=[common],
        help="measure saved models: sharpness, eigenvalue density, loss "
        "surfaces, interpolation",
        description=(
            "Measure compiled .keras models on probe data: the top Hessian "
            "eigenvalue, the trace, Keskar sharpness, the eigenvalue "
            "density (SLQ), the loss along a random filter-normalized "
            "direction (and on a plane with --surface-2d), and with two or "
            "more models the loss along the line from the first to each "
            "other. Writes CSVs and the plots drawn from them. The models "
            "are not changed."
        ),
    )
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help=".keras files of compiled models")
    parser.add_argument(
        "--data", required=True,
        help="npz file with arrays x and y: probe inputs, preprocessed as "
        "in training, and their targets",
    )
    parser.add_argument(
        "--test-data", default=None,
        help="npz file like --data: the lines are also evaluated on it",
    )
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR,
        help="folder for the CSVs and plots (default: %(default)s)",
    )
    parser.add_argument(
        "--points", type=_arguments.positive_int, default=21,
        help="points per line and per side of the plane (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--extent", type=_arguments.non_negative_float, default=1.0,
        help="lines span [-extent, extent] (default: %(default)s)",
    )
    parser.add_argument("--surface-2d", action="store_true",
                        help="also the loss on a plane of two directions")
    parser.add_argument(
        "--density-steps", type=_arguments.positive_int, default=30,
        help="Lanczos steps of the density (default: %(default)s)",
    )
    parser.add_argument(
        "--density-runs", type=_arguments.positive_int, default=2,
        help="random start vectors of the density (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=_arguments.integer, default=0,
        help="seed of the directions and start vectors (default: 0)",
    )
    _arguments.add_verbose_argument(parser)
    parser.set_defaults(handler=run, check=check)


def _missing_file(argument, path):
    """The error if `path` is not a file, else `None`."""
    if os.path.isfile(path):
        return None
    problem = "not a file" if os.path.exists(path) else "no such file"
    return f"argument {argument}: {problem}: {path!r}"


def check(args):
    """The usage error `argparse` cannot see, else `None` (no Keras)."""
    if args.points < 2:
        return f"argument --points: must be at least 2, got {args.points}"
    names = [pathlib.Path(path).stem for path in args.models]
    if len(set(names)) != len(names):
        return (
            "argument MODEL: the file names must differ (they name the "
            f"CSV rows): {names}"
        )
    files = [("MODEL", path) for path in args.models]
    files.append(("--data", args.data))
    if args.test_data:
        files.append(("--test-data", args.test_data))
    for argument, path in files:
        problem = _missing_file(argument, path)
        if problem is not None:
            return problem
    return _arguments.check_writable(
        args.output_dir
    ) or _arguments.missing_packages(("matplotlib",))


def run(args):
    """Runs `keras-sam landscape`; returns the exit status."""
    from keras_sam.experiments import landscape

    names = [pathlib.Path(path).stem for path in args.models]
    try:
        probe = landscape.load_probe(args.data)
        test = (landscape.load_probe(args.test_data, "--test-data")
                if args.test_data else None)
        models = landscape.load_models(args.models)
    except ValueError as error:
        return _arguments.error("landscape", str(error))
    paths = landscape.measure_models(
        models, names, probe, test, output_dir=args.output_dir,
        num_points=args.points, extent=args.extent,
        surface_2d=args.surface_2d, density_steps=args.density_steps,
        density_runs=args.density_runs, seed=args.seed,
    )
    paths.update(landscape.plot_results(args.output_dir))
    _arguments.print_paths(paths)
    return 0
