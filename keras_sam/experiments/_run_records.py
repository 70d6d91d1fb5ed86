"""What every experiment run records about itself (private).

The environment (backend, versions, processor, commit), the time, JSON
and CSV files, and the dtype policy a run trains under: shared by
`reproduce`, `sweep` and `demo`.
"""

import csv
import json
import pathlib
import platform
import subprocess
import time


def environment():
    """Backend, Keras and Python versions, machine, processor, commit."""
    import keras

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _processor_name(),
        "commit": _git_commit(),
    }


def _processor_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit():
    """The checkout's short commit, `+dirty` when `keras_sam/` has
    uncommitted changes; `"unknown"` outside a git checkout."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "keras_sam")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _git(*arguments):
    root = pathlib.Path(__file__).resolve().parents[2]
    return subprocess.run(
        ["git", "-C", str(root), *arguments],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def now():
    """The current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path, value):
    """Writes `value` as indented JSON, atomically (a kill never leaves
    half a file)."""
    path = pathlib.Path(path)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


def read_csv(path):
    """The rows of a CSV file, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def set_precision(mixed_precision):
    """Sets Keras' global dtype policy: `mixed_<mixed_precision>`, or
    float32 for `None`."""
    import keras

    if mixed_precision not in (None, "bfloat16", "float16"):
        raise ValueError(
            "Argument `mixed_precision` must be None, 'bfloat16' or "
            f"'float16'. Received: mixed_precision={mixed_precision!r}."
        )
    policy = (
        "float32" if mixed_precision is None else f"mixed_{mixed_precision}"
    )
    keras.config.set_dtype_policy(policy)
