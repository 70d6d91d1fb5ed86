"""benchmarks/gpu_reproduce.sh at tiny sizes, on JAX, with TensorFlow
made unimportable (the GPU machine has none)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "cifar10"

BLOCKER = '''
import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"{name} is blocked for this test")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


@pytest.mark.slow
def test_gpu_reproduce_runs_sam_and_sgd_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    if not (DATA / "train.npz").is_file():
        pytest.skip(f"no CIFAR-10 copy at {DATA}")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
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
