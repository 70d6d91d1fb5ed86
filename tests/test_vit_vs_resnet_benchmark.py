"""`benchmarks/vit_vs_resnet.py` (evidence round 7): its paired statistics
against SciPy, AdamW's schedule and weight-decay exclusions against their
definitions, and (slow) a killed round resuming without repeating a run."""

import math

import numpy as np
import pytest
from scipy import stats
from scripts import fake_cifar_dir, load_script

from keras_sam.experiments import _run_records


@pytest.fixture(scope="module")
def round7():
    load_script("benchmarks/evidence.py")  # the sibling it imports
    return load_script("benchmarks/vit_vs_resnet.py")


def _rows(errors, eigenvalues):
    rows = []
    for (architecture, arm), per_seed in errors.items():
        for seed, error in enumerate(per_seed):
            rows.append({
                "architecture": architecture, "arm": arm, "seed": seed,
                "test_error": error,
                "top_eigenvalue": eigenvalues[(architecture, arm)][seed],
                "trace": 10.0 * eigenvalues[(architecture, arm)][seed],
            })
    return rows


def _interval(values):
    values = np.asarray(values, dtype=np.float64)
    low, high = stats.t.interval(
        0.95, df=values.size - 1, loc=values.mean(), scale=stats.sem(values)
    )
    return values.mean(), (high - low) / 2


def test_gains_difference_and_sharpness_ratios_match_scipy(round7):
    errors = {
        ("vit", "adamw"): [50.0, 52.0, 51.0],
        ("vit", "sam"): [45.0, 46.5, 47.0],
        ("resnet", "adamw"): [40.0, 41.0, 39.5],
        ("resnet", "sam"): [39.0, 40.5, 39.0],
    }
    eigenvalues = {
        ("vit", "adamw"): [400.0, 500.0, 450.0],
        ("vit", "sam"): [100.0, 90.0, 120.0],
        ("resnet", "adamw"): [50.0, 60.0, 40.0],
        ("resnet", "sam"): [45.0, -1.0, 35.0],  # seed 1: no ratio
    }
    summary = {s["quantity"]: s for s in round7.summarize(
        _rows(errors, eigenvalues))}
    vit_gain = np.subtract(errors["vit", "adamw"], errors["vit", "sam"])
    resnet_gain = np.subtract(errors["resnet", "adamw"],
                              errors["resnet", "sam"])
    expected = {
        "vit: SAM's gain, adamw - sam (points)": vit_gain,
        "resnet: SAM's gain, adamw - sam (points)": resnet_gain,
        "primary: gain(vit) - gain(resnet) (points)": vit_gain - resnet_gain,
        "adamw: log10 top eigenvalue vit / resnet": np.log10(
            np.divide(eigenvalues["vit", "adamw"],
                      eigenvalues["resnet", "adamw"])),
        "vit: log10 trace sam / adamw": np.log10(
            np.divide(eigenvalues["vit", "sam"], eigenvalues["vit", "adamw"])),
        "resnet: log10 top eigenvalue sam / adamw": np.log10(
            [45.0 / 50.0, 35.0 / 40.0]),
    }
    for quantity, values in expected.items():
        mean, half = _interval(values)
        assert summary[quantity]["n"] == len(values), quantity
        assert summary[quantity]["mean"] == pytest.approx(mean), quantity
        assert summary[quantity]["half_width"] == pytest.approx(half)
    assert summary["vit: SAM's gain, adamw - sam (points)"]["verdict"] == (
        "SAM better")
    primary = summary["primary: gain(vit) - gain(resnet) (points)"]
    mean, half = _interval(vit_gain - resnet_gain)
    assert primary["verdict"] == (
        "larger for the ViT" if mean - half > 0 else "no difference shown")
    assert summary["adamw: log10 top eigenvalue vit / resnet"][
        "verdict"] == "ViT sharper"
    assert summary["vit adamw: test error (%)"]["verdict"] == ""


def test_adamw_warms_up_decays_and_skips_the_protocols_variables(round7):
    settings = dict(round7.PROTOCOL_7, epochs=5, warmup_epochs=1,
                    architectures={"vit": {"patch_size": 8, "num_layers": 1,
                                           "num_heads": 2, "hidden_dim": 8,
                                           "mlp_dim": 8}})
    network = round7.build_network(settings, "vit")
    schedule = round7.learning_rate_schedule(settings, steps_per_epoch=10)
    optimizer = round7.adamw(settings, network, steps_per_epoch=10)
    assert optimizer.weight_decay == settings["weight_decay"]
    peak = settings["learning_rate"]
    for step in (0, 5, 10, 30, 50):
        if step <= 10:
            expected = peak * step / 10
        else:
            expected = peak * 0.5 * (1 + math.cos(math.pi * (step - 10) / 40))
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-9)
    skipped = {v.path for v in round7.no_decay(network)}
    for variable in network.trainable_variables:
        expected = (
            len(variable.shape) < 2
            or variable.path.endswith("bias")
            or "class_token" in variable.path
            or "position_embedding" in variable.path
        )
        assert (variable.path in skipped) == expected, variable.path
    assert any(p.endswith("query/bias") for p in skipped)  # 2-D bias
    assert any("kernel" in v.path for v in network.trainable_variables
               if v.path not in skipped)
    assert network.count_params() < 10_000  # the override's small ViT


@pytest.mark.slow
def test_killed_round_resumes_without_repeating(round7, tmp_path):
    data_dir = fake_cifar_dir(tmp_path)
    settings = dict(
        round7.PROTOCOL_7, train_size=20, epochs=1, warmup_epochs=0,
        seeds=[0], probe_size=8, lanczos_iterations=2, trace_samples=1,
        line_size=8, line_points=3,
        architectures={
            "vit": {"patch_size": 8, "num_layers": 1, "num_heads": 2,
                    "hidden_dim": 8, "mlp_dim": 8},
            "resnet": {"depth": 8},
        },
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--data-dir"):
        round7.run_round(out, tmp_path / "nowhere", settings)
    assert not out.exists()  # a failed start leaves nothing
    assert round7.run_round(out, data_dir, settings, max_runs=1,
                            verbose=0) == 1
    assert round7.run_round(out, data_dir, settings, verbose=0) == 3
    rows = _run_records.read_csv(out / "runs.csv")
    assert [(r["architecture"], r["arm"]) for r in rows] == [
        ("vit", "adamw"), ("vit", "sam"), ("resnet", "adamw"),
        ("resnet", "sam")]
    assert rows[0]["init_digest"] == rows[1]["init_digest"]
    assert rows[2]["init_digest"] == rows[3]["init_digest"]
    line = _run_records.read_csv(out / "curves" / "line_vit_sam_seed0.csv")
    assert [float(r["alpha"]) for r in line] == [-1.0, 0.0, 1.0]
    assert round7.run_round(out, data_dir, settings, verbose=0) == 0
    assert "4 of 4 planned runs" in (out / "README.md").read_text()
