"""Tests for the `keras-sam` command line (`keras_sam.experiments.cli`)."""

import csv
import json
import os
import subprocess
import sys

import keras
import pytest

from keras_sam.experiments import cli


def _read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_quick_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"
    status = cli.main(
        ["demo", "--quick", "--output-dir", str(output), "--verbose", "0"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    for label in (
        "SGD",
        "SAM (rho=0.05)",
        "test accuracy",
        "final train loss",
        "mean sam_sharpness (training logs)",
        "sharpness at final weights (probe)",
    ):
        assert label in printed
    # SGD logs no sam_sharpness during training: said so, not invented.
    sharpness_row = next(
        line for line in printed.splitlines() if "training logs" in line
    )
    assert sharpness_row.split("|")[1].strip() == "n/a"

    rows = _read_history(output / "history.csv")
    assert [(r["optimizer"], r["epoch"]) for r in rows] == [
        ("sgd", "1"),
        ("sam", "1"),
    ]
    sgd, sam = rows
    assert sgd["sam_sharpness"] == "" and float(sam["sam_sharpness"]) > 0
    assert float(sam["grad_norm"]) > 0
    for row in rows:
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert float(row["probe_sharpness"]) > 0
    record = json.loads((output / "summary.json").read_text())
    assert record["config"]["train_images"] == 512
    assert record["config"]["epochs"] == 1
    assert record["summary"]["sam"]["test_accuracy"] == pytest.approx(
        float(sam["test_accuracy"])
    )
    assert record["summary"]["sgd"]["mean_sam_sharpness"] is None
    assert f"{float(sam['test_accuracy']):.4f}" in printed
    png = (output / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_demo_runs_start_identically_so_rho_zero_gives_sgd(tmp_path):
    # With rho = 0 a SAM step is the plain step. Equal results therefore
    # show that both runs share initial weights, data order and flips.
    output = tmp_path / "demo"
    cli.main(
        [
            "demo",
            "--quick",
            "--rho",
            "0",
            "--output-dir",
            str(output),
            "--verbose",
            "0",
        ]
    )
    sgd, sam = _read_history(output / "history.csv")
    for key in ("loss", "accuracy", "test_loss", "test_accuracy"):
        assert float(sam[key]) == pytest.approx(float(sgd[key]), abs=1e-4)
    assert float(sam["sam_sharpness"]) == 0.0


def test_parser_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main([])
    assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        cli.main(["demo", "--backend", "numpy"])
    assert error.value.code == 2
    assert "numpy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--rho", "-1"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--epochs", "0"])


def test_help_lists_the_demo(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["--help"])
    assert error.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_backend_option_sets_keras_backend_in_process(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    current = keras.backend.backend()
    # Same backend as the loaded Keras: nothing to re-run.
    assert cli._use_backend(current, ["demo"]) is None
    assert os.environ["KERAS_BACKEND"] == current
    assert cli._use_backend(None, ["demo"]) is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_demo_quick_on_another_backend_through_the_console_command(
    tmp_path, backend
):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_sam.experiments.cli",
            "demo",
            "--quick",
            "--backend",
            backend,
            "--verbose",
            "0",
            "--output-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["backend"] == backend
    assert "test accuracy" in result.stdout
