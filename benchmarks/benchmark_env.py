"""Shared by the scripts in `benchmarks/`: where a figure was measured
(commit, hardware, device), command-line types, and the README writer.
"""

import argparse
import os
import pathlib
import platform
import subprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def positive_int(text):
    """`argparse` type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def load_average():
    """1-minute load average, where available."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def git_commit():
    """The short commit of the checkout (`+dirty` with tracked changes);
    `$BENCHMARK_COMMIT` where the copy has no `.git` (the GPU machine);
    `None` if neither is known."""
    if os.environ.get("BENCHMARK_COMMIT"):
        return os.environ["BENCHMARK_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=10,
    ).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def describe_device(backend):
    """`(device name, is_accelerator, backend library versions)`."""
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
    return f"CPU: {cpu_name()}, {cpu_count()} cores", False, versions


def write_readme_section(output_dir, begin, end, section):
    """Replaces the text between the markers `begin` and `end` of
    `output_dir/README.md` with `section` (which holds both markers), or
    appends it; hand-written text outside the markers stays."""
    readme = pathlib.Path(output_dir) / "README.md"
    if readme.exists():
        text = readme.read_text()
    else:
        text = "# Benchmarks\n\nTiming results written by `benchmarks/`.\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text)
    return readme
