"""The tutorials run top to bottom in quick mode; the plots come from CSVs.

Each tutorial runs in a subprocess (`--quick --output-dir <tmp>`), so
nothing under `saved_results/` is touched, and must write its CSVs, its
figures and `run.json`. The committed results are checked too: the
figures can be redrawn from the committed CSVs alone, and the generated
section of `saved_results/tutorials/README.md` matches them.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
RESULTS = REPO / "saved_results" / "tutorials"

OUTPUTS = {
    "01_quickstart": ["history.csv", "quickstart.png"],
    "02_gd_stability": [
        "gd_stability.csv", "edge_of_stability.png",
        "sharp_minimum_escape.png",
    ],
    "03_sgd_escape": [
        "escape_runs.csv", "scalar_criteria.csv", "trajectories.csv",
        "momentum_escape.csv", "escape_1d.png", "escape_network.png",
        "momentum_escape.png",
    ],
    "04_sam_flatness": ["sam_flatness.csv", "sam_flatness.png"],
    "05_full_batch_vs_sgd": [
        "full_batch_vs_sgd.csv", "full_batch_vs_sgd.png",
    ],
    "06_flat_vs_sharp_minima": [
        "minima.csv", "density.csv", "interpolation.csv", "surfaces.csv",
        "flat_vs_sharp.png",
    ],
    "07_vit_vs_resnet": ["runs.csv", "lines.csv", "vit_vs_resnet.png"],
}

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the tutorials run on the default (TensorFlow) backend",
)


def _run(args, timeout):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_SAM_TUTORIAL_QUICK", None)
    # The scripts import the package: this checkout's, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), env.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, *map(str, args)], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_tutorial_runs_in_quick_mode(name, tmp_path):
    _run([TUTORIALS / f"{name}.py", "--quick", "--output-dir", tmp_path],
         timeout=600)
    for filename in [*OUTPUTS[name], "run.json"]:
        path = tmp_path / filename
        assert path.is_file() and path.stat().st_size > 0, filename
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["quick"] is True
    assert record["tutorial"] == name


def test_plots_are_redrawn_from_committed_csvs_alone(tmp_path):
    for name in OUTPUTS:
        source = RESULTS / name
        if not source.is_dir():
            pytest.skip(f"no committed results for {name}")
        (tmp_path / name).mkdir()
        for path in source.glob("*.csv"):
            shutil.copy(path, tmp_path / name)
    _run([TUTORIALS / "make_plots.py", "--results-dir", tmp_path],
         timeout=300)
    for name, files in OUTPUTS.items():
        for filename in files:
            assert (tmp_path / name / filename).is_file(), filename


def test_committed_readme_matches_the_csvs():
    if not (RESULTS / "README.md").is_file():
        pytest.skip("no committed tutorial results")
    _run([TUTORIALS / "make_plots.py", "--check-readme"], timeout=300)
