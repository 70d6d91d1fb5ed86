"""benchmarks/gpu_reproduce.sh at tiny sizes, on JAX, with TensorFlow
made unimportable (the GPU machine has none)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from no_tensorflow import write_blocker

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "cifar10"


@pytest.mark.slow
def test_gpu_reproduce_runs_sam_and_sgd_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    if not (DATA / "train.npz").is_file():
        pytest.skip(f"no CIFAR-10 copy at {DATA}")
    write_blocker(tmp_path / "blocker")
    env = dict(
        os.environ, SKIP_WHEELS="1", PYTHONPATH=str(tmp_path / "blocker"),
        EPOCHS="1", PATH=f"{pathlib.Path(sys.executable).parent}:"
        f"{os.environ['PATH']}",
        REPRODUCE_ARGS="--model small-cnn --train-size 100 --test-size 50 "
        "--batch-size 50",
    )
    out = tmp_path / "gpu"
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_reproduce.sh"), str(DATA),
         str(out)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    info = json.loads((out / "run_info.json").read_text())
    assert info["input_pipeline"] == "numpy"
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header, SAM, SGD
    reference = json.loads((out / "reference.json").read_text())
    assert reference["test_error_percent"] == {
        "SGD": 3.20, "SAM": 2.86, "ASAM": 2.55}
    assert "tensorflow" not in (out / "gpu_reproduce_log.txt").read_text()
