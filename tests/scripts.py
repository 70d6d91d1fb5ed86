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


def fake_cifar_dir(folder, sizes=(("train", 40), ("test", 20)), seed=0):
    """`folder / "cifar"` holding `train.npz` and `test.npz` in the
    CIFAR-10 JPEG copy's format (random 32x32 images, labels cycling
    through 0-9), for the evidence runners' tests; returns the folder."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    data_dir = folder / "cifar"
    data_dir.mkdir()
    for name, count in sizes:
        blobs = []
        for _ in range(count):
            buffer = io.BytesIO()
            image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(buffer, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])])
        np.savez(data_dir / f"{name}.npz", data=np.concatenate(blobs),
                 offsets=offsets, y=(np.arange(count) % 10).astype(np.uint8))
    return data_dir
