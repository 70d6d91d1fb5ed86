"""Tests for `keras-sam reproduce` (`keras_sam.experiments.reproduce`) and
the paper's Table 1 stored in `keras_sam.experiments.paper_results`."""

import csv
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scripts import run_ok

from keras_sam.experiments import cli, paper_results, reproduce, sweep
from keras_sam.experiments.config import RunConfig

pytest.importorskip("tensorflow")

REFERENCE = pathlib.Path(
    os.environ.get(
        "KERAS_SAM_REFERENCE",
        pathlib.Path(__file__).resolve().parents[2]
        / "shared/reference/000_63e5c56a0eac3c04.txt",
    )
)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference text absent")
def test_table_1_matches_the_reference_text():
    # Lines such as "WRN-28-10 (200 epochs)<TAB>AA<TAB>2.1 $\pm <0.1$<TAB>
    # 2.3 ± 0.1<TAB>13.6 ± 0.2<TAB>15.8 ± 0.2": CIFAR-10 SAM, SGD, then
    # CIFAR-100 SAM, SGD.
    cell = re.compile(r"([\d.]+) (?:± |\$\\pm )(<?[\d.]+)\$?")
    parsed = {}
    for line in REFERENCE.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 6 and fields[1] in ("Basic", "Cutout", "AA"):
            cells = [cell.fullmatch(field.strip()) for field in fields[2:]]
            assert all(cells), line
            parsed[(fields[0], fields[1])] = [m.groups() for m in cells]
    assert len(parsed) == 15
    for row in paper_results.TABLE_1:
        label = paper_results.AUGMENT_LABELS[row.augment]
        values = parsed[(row.model_label, label)]
        offset = 0 if row.dataset == "cifar10" else 2
        sam, sgd = values[offset], values[offset + 1]
        assert (float(sam[0]), sam[1]) == (row.sam_error, row.sam_interval)
        assert (float(sgd[0]), sgd[1]) == (row.sgd_error, row.sgd_interval)
    assert len(paper_results.TABLE_1) == 30  # 60 cells


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference text absent")
def test_table_2_matches_the_reference_text():
    # "ResNet-50<TAB>100<TAB>22.5 ± 0.1<TAB>6.28 ± 0.08<TAB>22.9 ± 0.1<TAB>
    # 6.62 ± 0.11", the model named on its first row only: SAM top-1,
    # top-5, then standard training's.
    cell = re.compile(r"([\d.]+) (?:± |\$\\pm )(<?[\d.]+)\$?")
    parsed, model = {}, None
    for line in REFERENCE.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 6 and fields[1] in ("100", "200", "400"):
            model = fields[0] or model
            cells = [cell.fullmatch(field.strip()) for field in fields[2:]]
            assert all(cells), line
            parsed[(model, int(fields[1]))] = [m.groups() for m in cells]
    assert len(parsed) == 9
    for row in paper_results.TABLE_2:
        stored = [
            (row.sam_top1, row.sam_top1_interval),
            (row.sam_top5, row.sam_top5_interval),
            (row.sgd_top1, row.sgd_top1_interval),
            (row.sgd_top5, row.sgd_top5_interval),
        ]
        printed = parsed[(row.model_label, row.epochs)]
        assert stored == [(float(v), i) for v, i in printed]
    assert len(paper_results.TABLE_2) == 9
    row = paper_results.find_imagenet_row("resnet-50")
    assert (row.epochs, row.sam_top1, row.sgd_top1) == (100, 22.5, 22.9)
    assert paper_results.find_imagenet_row("resnet-50", 300) is None


def test_find_row_and_reference_row():
    row = paper_results.find_row("wrn-28-10", "basic", "cifar100", 200)
    assert (row.sam_error, row.sgd_error) == (16.5, 18.8)
    row = paper_results.find_row("wrn-28-10", "cutout", "cifar10", 1800)
    assert (row.sam_error, row.sgd_error) == (2.1, 2.7)
    assert paper_results.find_row("wrn-28-10", "basic", "cifar10", 30) is None
    row, same = paper_results.reference_row(
        "pyramidnet-272-200-shakedrop", "autoaugment", "cifar10", 1800
    )
    assert same and (row.sam_error, row.sam_interval) == (1.4, "<0.1")
    row, same = paper_results.reference_row("small-cnn", "none", "cifar10")
    assert not same and row.model_name == "wrn-28-10" and row.epochs == 200


def test_mean_and_interval_against_t_table():
    # Student t quantiles t(0.975, df): df=4: 2.7764, df=1: 12.7062.
    mean, half = reproduce.mean_and_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert half == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), 1e-4)
    mean, half = reproduce.mean_and_interval([2.0, 4.0])
    assert half == pytest.approx(12.7062 * math.sqrt(2.0) / math.sqrt(2), 1e-4)
    assert reproduce.mean_and_interval([7.0]) == (7.0, None)


def test_reproduce_quick_end_to_end_and_resume(tmp_path, capsys):
    output = tmp_path / "reproduce"
    arguments = [
        "reproduce",
        "--quick",
        "--train-size",
        "300",
        "--test-size",
        "120",
        "--output-dir",
        str(output),
        "--verbose",
        "0",
    ]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out

    # rho: the grid point with the best held-out accuracy.
    selection = _read_csv(output / "rho_selection.csv")
    assert sorted(float(r["rho"]) for r in selection) == [0.05, 0.1]
    accuracy = {float(r["rho"]): float(r["val_accuracy"]) for r in selection}
    best = json.loads((output / "rho_selection_best.json").read_text())
    chosen = best["hyperparameters"]["rho"]
    assert accuracy[chosen] == max(accuracy.values())

    # Final runs: SAM and SGD (2x epochs) for seeds 0 and 1.
    rows = _read_csv(output / "results.csv")
    assert [(r["optimizer"], r["seed"]) for r in rows] == [
        ("sam", "0"),
        ("sgd", "0"),
        ("sam", "1"),
        ("sgd", "1"),
    ]
    for row in rows:
        expected_rho = chosen if row["optimizer"] == "sam" else 0.0
        assert float(row["rho"]) == expected_rho
        assert int(row["epochs"]) == (1 if row["optimizer"] == "sam" else 2)
        assert float(row["test_error"]) == pytest.approx(
            100 * (1 - float(row["test_accuracy"]))
        )

    # The table: NumPy mean and t interval of the CSV, and the paper's row.
    table = (output / "table.md").read_text()
    for optimizer in ("sam", "sgd"):
        errors = [
            float(r["test_error"]) for r in rows if r["optimizer"] == optimizer
        ]
        half = 12.7062 * np.std(errors, ddof=1) / math.sqrt(2)
        assert f"{np.mean(errors):.2f} ± {half:.2f}" in table
    assert "| 2.7 ± 0.1 | 3.5 ± 0.1 |" in table
    assert "not a reproduction" in table  # small-cnn is not in Table 1
    assert "JPEG-compressed copy" in table
    assert table in printed
    summary = json.loads((output / "summary.json").read_text())
    assert summary["summary"]["sam"]["seeds"] == [0, 1]
    assert not list(output.glob("runs/*_backup"))

    # Same command again: every run is kept, nothing retrained.
    stamps = {p: p.stat().st_mtime_ns for p in output.glob("runs/*.json")}
    assert cli.main(arguments) == 0
    assert capsys.readouterr().out.count("done before, kept") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert _read_csv(output / "results.csv") == rows

    # Other settings into the same folder are refused.
    assert cli.main(arguments + ["--epochs", "2"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_reproduce_rejects_autoaugment_and_bad_values(capsys):
    # Not offered: Keras 3 has no AutoAugment, so it could only fail.
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--augment", "autoaugment"])
    assert "invalid choice: 'autoaugment'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--rho-grid", "0.1,x"])
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--validation-fraction", "1"])
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--tuner", "hyperband"])
    assert cli.main(["sweep", "--tuner", "random"]) == 2
    assert "--max-trials" in capsys.readouterr().err


def test_help_lists_sweep_and_reproduce(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "sweep" in text and "reproduce" in text
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = capsys.readouterr().out
    for option in ("--rho-grid", "--seeds", "--backend", "--quick"):
        assert option in text


@pytest.mark.slow
def test_reproduce_quick_on_jax_through_the_console_command(tmp_path):
    pytest.importorskip("jax")
    run_ok(
        [
            sys.executable,
            "-m",
            "keras_sam.experiments.cli",
            "reproduce",
            "--quick",
            "--backend",
            "jax",
            "--rho",
            "0.05",
            "--seeds",
            "1",
            "--verbose",
            "0",
            "--output-dir",
            str(tmp_path),
        ],
        env=dict(
            os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3"
        ),
    )
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["environment"]["backend"] == "jax"
    assert len(_read_csv(tmp_path / "results.csv")) == 2


@pytest.mark.slow
def test_reproduce_killed_mid_run_resumes_to_the_uninterrupted_result(
    tmp_path,
):
    def command(output):
        return [
            sys.executable,
            "-m",
            "keras_sam.experiments.cli",
            "reproduce",
            "--quick",
            "--rho",
            "0.05",
            "--seeds",
            "1",
            "--epochs",
            "3",
            "--verbose",
            "0",
            "--output-dir",
            str(output),
        ]

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run_ok(command(tmp_path / "whole"), env=env)

    output = tmp_path / "killed"
    backup = output / "runs" / "sam_seed0_backup"
    process = subprocess.Popen(
        command(output),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # Kill once the first epoch of the SAM run is backed up.
        while not any(backup.glob("**/*.json")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert not (output / "runs" / "sam_seed0.json").exists()
    run_ok(command(output), env=env)
    # The SAM run went on from its backup instead of starting again.
    record = json.loads((output / "runs" / "sam_seed0.json").read_text())
    assert 1 <= record["epochs_run"] < 3
    whole = json.loads((tmp_path / "whole/runs/sam_seed0.json").read_text())
    assert whole["epochs_run"] == 3
    expected = _read_csv(tmp_path / "whole" / "results.csv")
    rows = _read_csv(output / "results.csv")
    for row, reference_row in zip(rows, expected, strict=True):
        for key in ("test_error", "test_loss"):
            assert float(row[key]) == pytest.approx(
                float(reference_row[key]), abs=1e-4
            )


@pytest.mark.parametrize("run", ["reproduce", "sweep"])
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": "nope"}, "Unknown model name='nope'"),
        ({"dataset": "cifar100"}, "CIFAR-10 only"),
        ({"source": "npz", "data_dir": "/nonexistent"}, "missing"),
    ],
)
def test_a_run_that_cannot_start_leaves_no_folder(
    tmp_path, run, settings, message
):
    # Called as a library, without the command line's checks: a folder
    # (or its settings.json) left behind would refuse the corrected run.
    config = RunConfig(source="sample", model="small-cnn", train_size=100)
    config = config.replace(**settings)
    output = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        if run == "reproduce":
            reproduce.run_reproduction(output, config)
        else:
            sweep.run_sweep(output, config)
    assert not output.exists()
