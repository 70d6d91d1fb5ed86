"""What every run records about itself (private to the repository).

The one home of the run records that the experiments (`reproduce`,
`sweep`, `demo`, `landscape`), the scripts in `benchmarks/` and the
tutorials write: the commit and whether the checkout was dirty, the
processor, the device, the date; and the files they read and write
(CSV, JSON, a generated section of a README).

"Dirty" has one meaning everywhere: tracked files of the checkout differ
from the commit (`git status --porcelain --untracked-files=no`). The
commit is that of the checkout holding the imported `keras_sam`, the code
that ran.
"""

import csv
import json
import os
import pathlib
import platform
import subprocess
import time

_CHECKOUT = pathlib.Path(__file__).resolve().parents[2]

COMMIT_ENVIRONMENT_VARIABLE = "BENCHMARK_COMMIT"
"""Names the commit where the copy has no `.git` (a GPU machine given a
copy of the working tree)."""


def environment():
    """Backend, Keras and Python versions, machine, processor, commit.

    Returns:
        A dict of strings; `"commit"` is `"unknown"` where it is not known.
    """
    import keras

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": processor_name(),
        "commit": git_commit() or "unknown",
    }


def processor_name():
    """The CPU model (`/proc/cpuinfo`), else what `platform` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def hardware():
    """`"CPU: <model>, <n> cores"`."""
    return f"CPU: {processor_name()}, {cpu_count()} cores"


def load_average():
    """The 1-minute load average, or `None` where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def git_commit():
    """The checkout's short commit, `+dirty` when it is dirty.

    Returns:
        A string; `$BENCHMARK_COMMIT` where that is set; `None` outside a
        git checkout.
    """
    if os.environ.get(COMMIT_ENVIRONMENT_VARIABLE):
        return os.environ[COMMIT_ENVIRONMENT_VARIABLE]
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def uncommitted_files(*paths):
    """Changed or new files under `paths` of the checkout, sorted: the
    code a run used beyond its commit. Empty outside a git checkout."""
    try:
        status = _git("status", "--porcelain", "--", *paths)
    except (OSError, subprocess.SubprocessError):
        return []
    # Porcelain lines are "XY path": two status letters, a space.
    return sorted(line[3:] for line in status.splitlines() if line.strip())


def _git(*arguments):
    return subprocess.run(
        ["git", "-C", str(_CHECKOUT), *arguments],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def describe_device(backend):
    """Where a benchmark runs.

    Args:
        backend: `"jax"`, `"torch"` or `"tensorflow"`.

    Returns:
        `(device name, is_accelerator, backend library versions)`; a CPU
        is named `"CPU: <model>, <n> cores"`.
    """
    versions = {}
    accelerator = None
    if backend == "jax":
        import jax
        import jaxlib

        versions.update(jax=jax.__version__, jaxlib=jaxlib.__version__)
        device = jax.devices()[0]
        if device.platform != "cpu":
            accelerator = f"{device.device_kind} ({device.platform})"
    elif backend == "torch":
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():
            accelerator = torch.cuda.get_device_name(0)
    else:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            accelerator = details.get("device_name", gpus[0].name)
    if accelerator is not None:
        return accelerator, True, versions
    return hardware(), False, versions


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


def read_csv(path, missing_ok=False):
    """The rows of a CSV file, as dicts of strings.

    Args:
        path: The file.
        missing_ok: Boolean, whether a missing file reads as no rows
            (else `FileNotFoundError`). Defaults to `False`.

    Returns:
        A list of dicts, one per row, keyed by the header.
    """
    if missing_ok and not pathlib.Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def replace_readme_section(text, begin, end, section):
    """`text` with the part from the marker `begin` to the marker `end`
    replaced by `section` (which holds both markers), or with `section`
    appended where the markers are missing; the rest stays."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_readme_section(output_dir, begin, end, section):
    """Writes `section` into `output_dir/README.md` between its markers.

    Args:
        output_dir: The folder of the README.
        begin: The marker opening the generated section.
        end: The marker closing it.
        section: The new section, both markers included. A new README
            starts with a "Benchmarks" heading.

    Returns:
        The README's `pathlib.Path`.
    """
    readme = pathlib.Path(output_dir) / "README.md"
    if readme.exists():
        text = readme.read_text()
    else:
        text = "# Benchmarks\n\nTiming results written by `benchmarks/`.\n"
    readme.write_text(replace_readme_section(text, begin, end, section))
    return readme


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
