"""Tests for the demo's pure parts (`keras_sam.experiments.demo`): the
label noise, the share of labels fitted, the printed reading and the
figure. The end-to-end runs are in `tests/test_cli.py`."""


import numpy as np
import pytest
from scripts import plot_demo_history

from keras_sam.experiments import demo


def test_fitted_shares_counts_wrong_and_correct_labels():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    is_wrong = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    predictions = np.array([0, 9, 2, 3, 9, 9, 6, 9])
    shares = demo.fitted_shares(predictions, labels, is_wrong)
    # By hand: 2 of the 3 wrong labels reproduced, 2 of the 5 correct.
    assert shares == {
        "wrong_labels_fitted": pytest.approx(2 / 3),
        "correct_labels_fitted": pytest.approx(2 / 5),
    }
    clean = demo.fitted_shares(predictions, labels, np.zeros(8, bool))
    assert clean["wrong_labels_fitted"] is None
    assert clean["correct_labels_fitted"] == pytest.approx(4 / 8)


def _record(label_noise, sgd_accuracy, sam_accuracy):
    def run(accuracy, wrong, sharpness, seconds):
        return {
            "test_accuracy": accuracy,
            "wrong_labels_fitted": wrong if label_noise else None,
            "final_probe_sharpness": sharpness,
            "train_seconds": seconds,
        }

    return {
        "summary": {
            "sgd": run(sgd_accuracy, 0.946, 0.5123, 90.4),
            "sam": run(sam_accuracy, 0.466, 0.1049, 181.6),
        },
        "config": {"label_noise": label_noise, "train_images": 2000},
        "demo_seconds": 291.2,
    }


def test_reading_with_label_noise_says_gain_memorization_and_time():
    reading = demo.format_reading(_record(0.4, 0.394, 0.456))
    lines = reading.splitlines()
    assert len(lines) == 3
    assert lines[0] == (
        "40% of the 2,000 training labels are wrong; test accuracy SGD "
        "39.4%, SAM 45.6%: SAM is 6.2 points more accurate."
    )
    assert "SGD 95%, SAM 47%" in lines[1]
    assert "SGD 0.512, SAM 0.105" in lines[1]
    assert lines[2] == (
        "Time: SGD 90 s, SAM 182 s (two gradients per step); the whole "
        "demo 291 s."
    )


def test_reading_says_when_sam_is_less_accurate():
    reading = demo.format_reading(_record(0.4, 0.569, 0.548))
    assert "SAM is 2.1 points less accurate." in reading.splitlines()[0]


def test_reading_on_clean_labels_is_the_honest_one():
    lines = demo.format_reading(_record(0.0, 0.569, 0.548)).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("Clean labels, 2,000 training images;")
    assert "SAM is 2.1 points less accurate." in lines[0]
    assert "flatter, not more accurate" in lines[1]
    assert "wrong labels" not in " ".join(lines).lower()


def test_demo_setting_presets():
    config, options = demo.demo_setting()
    assert (config.train_size, config.epochs, config.rho) == (2000, 20, 0.1)
    assert options == {"label_noise": 0.4, "width": 32, "flips": False}
    config, options = demo.demo_setting(0.2)
    assert options["label_noise"] == 0.2 and config is demo.DEMO_CONFIG
    config, options = demo.demo_setting(0)
    assert (config.train_size, config.epochs, config.rho) == (None, 10, 0.05)
    assert options == {"label_noise": 0.0, "width": 16, "flips": True}


def test_noisy_plot_is_titled_with_a_legend_in_every_panel(tmp_path):
    rows = [{"optimizer": name, "epoch": epoch, "loss": 1.0,
             "accuracy": 0.5, "test_accuracy": 0.4, "probe_sharpness": 0.1}
            for name in ("sgd", "sam") for epoch in (1, 2)]
    figure = plot_demo_history(
        tmp_path, rows, labels={"sgd": "SGD", "sam": "SAM (rho=0.1)"},
        title="SGD vs SAM", label_noise=0.4,
    )  # fmt: skip
    assert figure.get_suptitle() == "SGD vs SAM"
    for axis in figure.axes:
        assert axis.get_title() and axis.get_ylabel() and axis.get_xlabel()
        legend = [t.get_text() for t in axis.get_legend().get_texts()]
        assert legend[:2] == ["SGD", "SAM (rho=0.1)"]
    first = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert first[2] == "share of correct labels (60%)"
    assert figure.axes[0].get_title() == (
        "training accuracy on the given labels"
    )


def test_figure_title_says_labels_size_and_epochs():
    settings = {"width": 32, "train_images": 2000, "epochs": 20, "seed": 1,
                "label_noise": 0.4}
    assert demo._figure_title(settings) == (
        "SGD vs SAM with 40% of the training labels wrong\n"
        "small CNN (width 32), 2,000 training images, 20 epochs, seed 1"
    )
    settings.update(label_noise=0.0, epochs=1)
    assert demo._figure_title(settings).startswith(
        "SGD vs SAM on clean labels\nsmall CNN (width 32), 2,000 training "
        "images, 1 epoch,"
    )
