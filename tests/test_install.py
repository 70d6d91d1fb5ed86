"""What installing keras-sam brings: setup.cfg's requirements against what
the modules import, the library without the application's packages, and
(slow) a wheel built, installed in a fresh virtual environment and run."""

import ast
import configparser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import name of each distribution setup.cfg declares.
MODULES = {
    "keras": "keras",
    "numpy": "numpy",
    "scipy": "scipy",
    "keras-tuner": "keras_tuner",
    "matplotlib": "matplotlib",
    "Pillow": "PIL",
    "scikit-learn": "sklearn",
    "tensorboard": "tensorboard",
    "tensorflow-datasets": "tensorflow_datasets",
}
# Imported only by the backend they serve (setup.cfg's cpu, gpu, jax and
# torch extras).
# The backends and what comes with them (jaxlib with jax: `[jax]`).
BACKENDS = {"tensorflow", "jax", "jaxlib", "torch"}


def _requirements(text):
    names = [re.split(r"[<>=!\[;\s]", line.strip())[0]
             for line in text.strip().splitlines() if line.strip()]
    return {MODULES[name] for name in names}


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def _third_party_imports(paths):
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            modules.update(name.split(".")[0] for name in names)
    return modules - set(sys.stdlib_module_names) - {
        "keras_sam", "keras_sam_cli"}


def test_install_requires_is_what_the_library_imports():
    library = [path for path in (ROOT / "keras_sam").rglob("*.py")
               if "experiments" not in path.parts]
    imported = _third_party_imports(library) - BACKENDS
    declared = _requirements(_setup_cfg()["options"]["install_requires"])
    assert imported == declared == {"keras", "numpy", "scipy"}


def test_the_experiments_extra_is_what_the_application_imports():
    extras = _setup_cfg()["options.extras_require"]
    application = [*(ROOT / "keras_sam" / "experiments").rglob("*.py"),
                   ROOT / "keras_sam_cli.py"]
    imported = _third_party_imports(application) - BACKENDS
    library = _requirements(_setup_cfg()["options"]["install_requires"])
    experiments = _requirements(extras["experiments"])
    tfds = _requirements(extras["tfds"])
    # tensorboard is imported by KerasTuner on TensorFlow, not by us
    # (setup.cfg says why it is declared).
    assert imported - library == experiments - {"tensorboard"} | tfds
    assert not experiments & tfds


def test_the_library_runs_without_the_application_packages(tmp_path):
    pytest.importorskip("jax")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "library_only_job.py"),
         "--block", str(tmp_path)],
        env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "ok jax []"


def _copy_of_the_tree(destination):
    """The checkout without what builds, runs and git leave in it: a build
    writes build/ and *.egg-info next to setup.cfg."""
    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__",
        "keras_sam_runs", "site", ".ruff_cache", ".pytest_cache",
    )
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_demo_outside_the_repository(
    tmp_path
):
    """Builds the wheel, installs it with the experiments extra and JAX in
    a fresh virtual environment (no system site-packages; pip's index,
    cache and find-links as configured), and runs `keras-sam demo
    --quick` from a folder outside the repository. 233 s on 2 shared
    cores with pip's cache warm (December 2026)."""
    start = time.monotonic()
    source = _copy_of_the_tree(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "--quiet", "--wheel-dir", str(dist),
         str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    [wheel] = dist.glob("keras_sam-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "keras_sam/experiments/data/cifar10_sample.npz" in names
    assert "keras_sam_cli.py" in names and "keras_sam/_version.py" in names
    assert not [name for name in names if name.startswith("tests/")]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                   timeout=300)
    bin_dir = venv / "bin"
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
         f"{wheel}[experiments]", "jax"],
        capture_output=True, text=True, timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "KERAS_BACKEND")}
    where = subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import importlib.metadata as m, importlib.util as u; "
         "print(u.find_spec('keras_sam').origin, m.version('keras-sam'))"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60,
        check=True,
    )
    path, version = where.stdout.split()
    assert path.startswith(str(venv))
    assert f"keras_sam-{version}-" in wheel.name

    usage = subprocess.run(
        [str(bin_dir / "keras-sam"), "demo", "--epochs", "0"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60,
    )
    assert usage.returncode == 2
    assert usage.stderr == (
        "keras-sam demo: error: argument --epochs: must be >= 1, got 0\n")

    demo = subprocess.run(
        [str(bin_dir / "keras-sam"), "demo", "--quick", "--backend", "jax",
         "--verbose", "0"],
        capture_output=True, text=True, env=env, cwd=elsewhere,
        timeout=1800,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    output = elsewhere / "keras_sam_runs" / "demo_quick"
    record = json.loads((output / "summary.json").read_text())
    assert record["backend"] == "jax"
    assert record["config"]["train_images"] == 512
    assert (output / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "test accuracy" in demo.stdout
    print(f"wheel test: {time.monotonic() - start:.0f} s")
