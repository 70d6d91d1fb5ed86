"""Helpers shared by the tests: loading the scripts of `benchmarks/` and
`tutorials/` as modules (for the tests that call their functions), running
a command in a subprocess, and drawing the demo's figure from given rows."""

import csv
import importlib.util
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_script(relative_path):
    """Runs `REPO_ROOT / relative_path` as a module named after the file
    (its `__main__` block does not run) and returns the module.

    The module is registered under that name, as running the script
    registers it: a script that imports a sibling (`import evidence` in
    `benchmarks/vit_vs_resnet.py`) finds it once the sibling is loaded."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def run_ok(command, env=None, cwd=None, timeout=600):
    """Runs `command` in a subprocess capturing its text output and asserts
    exit status 0 (the output's tail shown if not); returns the completed
    process."""
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def plot_demo_history(folder, rows, **kwargs):
    """Writes `rows` as the demo's `history.csv` in `folder`, draws it with
    `demo.plot_history(..., **kwargs)` and returns the figure it made
    (caught at `plt.close`, so it stays open to be read)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from keras_sam.experiments import demo

    path = folder / "history.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figures = []
    original = plt.close
    plt.close = lambda figure=None: figures.append(figure)
    try:
        demo.plot_history(path, folder / "curves.png", **kwargs)
    finally:
        plt.close = original
    return figures[0]
