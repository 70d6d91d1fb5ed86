"""What every tutorial shares: options, output folder, run record, CSV.

Each tutorial is run as `python tutorials/<name>.py [--quick]
[--output-dir DIR]`. Quick mode (`--quick`, or the environment variable
`KERAS_SAM_TUTORIAL_QUICK=1`) is the smoke test CI runs: tiny sizes, a few
seconds of work, results not meant to be read. Without `--output-dir`, a
full run writes into `saved_results/tutorials/<name>/` and a quick run into
a temporary folder, so a smoke test never overwrites the committed
results.
"""

import argparse
import csv
import datetime
import json
import os
import pathlib
import shlex
import sys
import tempfile
import time

from keras_sam.experiments import _run_records

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "saved_results" / "tutorials"
QUICK_ENV = "KERAS_SAM_TUTORIAL_QUICK"


class Run:
    """One run of a tutorial: its options, folder and timing.

    Attributes:
        name: The tutorial's name, e.g. `"02_gd_stability"`.
        quick: Whether this is a quick (smoke-test) run.
        output_dir: `pathlib.Path` of the folder results are written to.
        args: The parsed `argparse.Namespace` (tutorial-specific options
            included).
    """

    def __init__(self, name, description, extra_options=()):
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument(
            "--quick",
            action="store_true",
            help=f"tiny smoke-test sizes (also: {QUICK_ENV}=1)",
        )
        parser.add_argument(
            "--output-dir",
            default=None,
            help="where to write CSVs and figures (default: "
            f"saved_results/tutorials/{name}/, or a temporary folder in "
            "quick mode)",
        )
        for flags, kwargs in extra_options:
            parser.add_argument(*flags, **kwargs)
        # `parse_known_args` lets the file run inside notebooks and IDEs.
        self.args, _ = parser.parse_known_args()
        self.name = name
        self.quick = bool(
            self.args.quick or os.environ.get(QUICK_ENV, "") == "1"
        )
        if self.args.output_dir:
            self.output_dir = pathlib.Path(self.args.output_dir)
        elif self.quick:
            self.output_dir = (
                pathlib.Path(tempfile.gettempdir()) / "keras_sam_tutorials"
                / name
            )
        else:
            self.output_dir = RESULTS_ROOT / name
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        # The code this run uses: recorded now, before anything can change.
        self.commit = _run_records.git_commit() or "unknown"
        self.uncommitted = _run_records.uncommitted_files(
            "tutorials", "keras_sam"
        )
        mode = "quick" if self.quick else "full"
        print(f"{name}: {mode} run, writing into {self.output_dir}")

    def path(self, filename):
        return self.output_dir / filename

    def write_csv(self, filename, rows, fields):
        """Writes `rows` (dicts) with the columns `fields`; floats in
        full precision."""
        with open(self.path(filename), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _format(row.get(k, "")) for k in fields})
        print(f"wrote {self.path(filename)} ({len(rows)} rows)")

    def finish(self, **summary):
        """Writes `run.json`: command, commit, hardware, date, runtime,
        and the headline numbers in `summary`."""
        import keras

        record = {
            "tutorial": self.name,
            "quick": self.quick,
            "command": _command(),
            "commit": self.commit,
            "uncommitted": self.uncommitted,
            "date": datetime.datetime.now(datetime.timezone.utc)
            .replace(microsecond=0)
            .isoformat()
            .replace("+00:00", "Z"),
            "hardware": _run_records.hardware(),
            "load_average_end": round(os.getloadavg()[0], 2),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "runtime_seconds": round(time.perf_counter() - self.start, 1),
            # User + system CPU time of this process: less sensitive than
            # the wall time to other jobs sharing the machine.
            "cpu_seconds": round(sum(os.times()[:2]), 1),
            "summary": summary,
        }
        with open(self.path("run.json"), "w") as f:
            json.dump(record, f, indent=2, default=_plain)
            f.write("\n")
        print(f"done in {record['runtime_seconds']:.0f} s")
        return record


def _plain(value):
    """JSON encoding of NumPy scalars."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _format(value):
    """Plain Python text for CSV cells (NumPy scalars included)."""
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        value = value.item()  # a NumPy scalar
    if isinstance(value, float):
        return repr(value)
    return value


def _command():
    script = pathlib.Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


