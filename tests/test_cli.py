"""Tests for the `keras-sam` command line (`keras_sam.experiments.cli`)."""

import csv
import json
import os
import sys

import keras
import numpy as np
import pytest
from scripts import plot_demo_history, run_ok

from keras_sam.experiments import cli


def _read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_quick_end_to_end(tmp_path, capsys, monkeypatch):
    # The default folder: --quick has its own, so it never overwrites the
    # full demo's results.
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "keras_sam_runs" / "demo_quick"
    status = cli.main(["demo", "--quick", "--verbose", "0"])
    assert status == 0
    assert sorted(p.name for p in output.parent.iterdir()) == ["demo_quick"]
    printed = capsys.readouterr().out
    for label in (
        "SGD",
        "SAM (rho=0.1)",
        "test accuracy",
        "final train loss",
        "wrong training labels fitted",
        "correct training labels fitted",
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
    settings = record["config"]
    assert settings["train_images"] == 512
    assert settings["epochs"] == 1
    # The default: 40% of the 512 training labels wrong, width 32, no
    # flips, Nesterov, rho 0.1.
    assert settings["label_noise"] == 0.4
    assert settings["wrong_labels"] == round(0.4 * 512)
    assert settings["width"] == 32 and settings["augmentation"] == "none"
    assert settings["nesterov"] is True and settings["rho"] == 0.1
    assert record["summary"]["sam"]["test_accuracy"] == pytest.approx(
        float(sam["test_accuracy"])
    )
    assert record["summary"]["sgd"]["mean_sam_sharpness"] is None
    for run in ("sgd", "sam"):
        assert 0 <= record["summary"][run]["wrong_labels_fitted"] <= 1
    assert f"{float(sam['test_accuracy']):.4f}" in printed
    # The reading: three lines after the table, then the paths.
    reading = printed.split("\n\n")[-2].splitlines()
    assert len(reading) == 3
    assert reading[0].startswith("40% of the 512 training labels are wrong")
    sgd_accuracy = record["summary"]["sgd"]["test_accuracy"]
    assert f"test accuracy SGD {sgd_accuracy:.1%}" in reading[0]
    assert reading[1].startswith("Wrong labels fitted (memorized): SGD ")
    assert reading[2].startswith("Time: SGD ")
    assert record["demo_seconds"] > 0
    png = (output / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_demo_quick_clean_labels_keeps_the_old_comparison(tmp_path, capsys):
    output = tmp_path / "clean"
    status = cli.main(
        ["demo", "--quick", "--noise", "0", "--verbose", "0",
         "--output-dir", str(output)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "SAM (rho=0.05)" in printed
    assert "wrong training labels fitted" not in printed
    settings = json.loads((output / "summary.json").read_text())["config"]
    assert (settings["label_noise"], settings["wrong_labels"]) == (0.0, 0)
    assert settings["width"] == 16 and settings["nesterov"] is False
    assert settings["augmentation"] == "random horizontal flip"
    reading = printed.split("\n\n")[-2].splitlines()
    assert len(reading) == 3
    assert reading[0].startswith("Clean labels, 512 training images;")
    assert "flatter, not more accurate" in reading[1]


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
    result = run_ok(
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
    )
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["backend"] == backend
    assert "test accuracy" in result.stdout


def _bad_run(command, output, *arguments):
    """`keras-sam <command> --quick ...` that must fail before writing."""
    return [
        command,
        "--quick",
        "--output-dir",
        str(output),
        "--verbose",
        "0",
        *arguments,
    ]


def _bad_data_dir(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "train.npz").write_bytes(os.urandom(3000))
    (folder / "test.npz").write_bytes(os.urandom(3000))
    return folder


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
@pytest.mark.parametrize(
    "case, expected",
    [
        (["--model", "nope"], ["argument --model", "'nope'"]),
        (
            ["--validation-fraction", "0"],
            ["argument --validation-fraction", "got 0"],
        ),
        (["--data-dir", "/nonexistent"], ["argument --data-dir", "'/nonexi"]),
        (["--train-size", "5"], ["argument --train-size", "too small", "6"]),
        (["--dataset", "cifar100"], ["argument --dataset", "'cifar100'"]),
        ("corrupt", ["train.npz is not a valid npz file"]),
        ("output under a file", ["argument --output-dir", "is a file"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, command, case, expected
):
    output = tmp_path / "run"
    if case == "corrupt":
        case = ["--data-dir", str(_bad_data_dir(tmp_path)), "--source", "npz"]
    elif case == "output under a file":
        (tmp_path / "file").write_text("")
        output = tmp_path / "file" / "run"
        case = []
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(_bad_run(command, output, *case)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"keras-sam {command}: error: ")
    assert len(error.strip().splitlines()) == 1, error
    for text in expected:
        assert text in error
    # Nothing written: the corrected command is not refused afterwards
    # as a folder "with other settings".
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["sweep", "--batch-size", "0"], "argument --batch-size"),
        (["sweep", "--batch-size", "64,0"], "expected integers >= 1"),
        (["reproduce", "--batch-size", "0"], "must be >= 1, got 0"),
        (["reproduce", "--validation-fraction", "x"], "got 'x'"),
        (["reproduce", "--rho", "a"], "expected a number, got 'a'"),
        (["demo", "--epochs", "1.5"], "expected an integer, got '1.5'"),
        (["demo", "--noise", "1"], "argument --noise: must be in [0, 1), "
         "got 1"),
        (["demo", "--noise", "-0.1"], "argument --noise: must be in"),
        (["demo", "--train-size", "6000"], "argument --train-size: the "
         "shipped sample has 5000 training images, got 6000"),
        (["demo", "--train-size", "0"], "argument --train-size: must be "
         ">= 1, got 0"),
        (["sweep", "--split-seed", "s"], "expected an integer, got 's'"),
        (["reproduce", "--augment", "autoaugment"], "invalid choice"),
    ],
)
def test_parser_errors_name_the_option_not_internal_names(
    capsys, arguments, expected
):
    with pytest.raises(SystemExit) as error:
        cli.main(arguments)
    assert error.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected in message
    # argparse names the type function when it raises a plain ValueError.
    assert " value: " not in message and "_" not in message.split(":")[-1]


def test_help_shows_percent_signs_and_model_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "10% of the training set" in text and "95% intervals" in text
    assert "%%" not in text
    assert "autoaugment" not in text.split("--augment")[1].split("}")[0]
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with 40% of the training labels wrong" in text
    assert "%%" not in text
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    model_help = text.split("--model MODEL")[-1]
    for name in ("small-cnn", "resnet-20", "wrn-28-10", "pyramidnet-272-200"):
        assert name in model_help


@pytest.mark.parametrize(
    "backend, package, extra",
    [("jax", "jax", "jax"), ("torch", "torch", "torch")],
)
def test_a_missing_backend_says_what_to_install(
    monkeypatch, capsys, backend, package, extra
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == package else find_spec(name),
    )
    assert cli.main(["demo", "--quick", "--backend", backend]) == 2
    error = capsys.readouterr().err
    assert error.startswith("keras-sam demo: error: argument --backend")
    assert f"pip install -e '.[{extra}]'" in error
    assert len(error.strip().splitlines()) == 1


def test_demo_progress_counts_the_runs_epochs(capsys):
    from keras_sam.experiments import demo

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    for epoch in range(3):
        model.fit(x, y, epochs=epoch + 1, initial_epoch=epoch, verbose=2,
                  callbacks=[demo._RunProgress(3)])
    printed = capsys.readouterr().out
    headers = [line for line in printed.splitlines()
               if line.startswith("Epoch ")]
    assert headers == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]


def test_demo_plot_labels_axes_and_names_rho(tmp_path):
    rows = [{"optimizer": name, "epoch": 1, "loss": 1.0,
             "test_accuracy": 0.5, "probe_sharpness": 0.1}
            for name in ("sgd", "sam")]
    figure = plot_demo_history(
        tmp_path, rows, labels={"sgd": "SGD", "sam": "SAM (rho=0.05)"}
    )
    axes = figure.axes
    assert all(axis.get_ylabel() for axis in axes)
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["SGD", "SAM (rho=0.05)"]
    assert list(axes[0].get_xticks()) == [1]


def test_the_parsers_model_names_are_the_registrys():
    """The CLI repeats the names so that `--help` imports no Keras."""
    from keras_sam import models
    from keras_sam.experiments.cli import _arguments

    assert _arguments.MODEL_NAMES == models.MODEL_NAMES


def test_a_missing_backend_from_the_environment_says_what_to_install(
    monkeypatch, capsys
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "tensorflow" else find_spec(name),
    )
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert cli.main(["demo", "--quick"]) == 2
    assert capsys.readouterr().err == (
        "keras-sam demo: error: the Keras backend is 'tensorflow' "
        "(KERAS_BACKEND, keras.json or Keras' default) and needs the "
        "tensorflow package, not installed here; install it with "
        "`pip install tensorflow` (or `pip install 'keras-sam[cpu]'`; "
        "from a clone: `pip install -e '.[cpu]'`) or choose another "
        "--backend\n"
    )


def test_the_backend_in_effect_reads_keras_json(monkeypatch, tmp_path):
    from keras_sam.experiments.cli import _arguments

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert _arguments.backend_in_effect(None) == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert _arguments.backend_in_effect(None) == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert _arguments.backend_in_effect(None) == "jax"
    assert _arguments.backend_in_effect("tensorflow") == "tensorflow"
