"""`benchmarks/evidence.py` at tiny sizes: the batches,
the paired statistics (against SciPy), and a killed grid resuming without
repeating a run."""

import pathlib

import numpy as np
import pytest
from scipy import stats
from scripts import fake_cifar_dir, load_script

from keras_sam.experiments import _run_records

SCRIPT = (
    pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    / "evidence.py"
)


@pytest.fixture(scope="module")
def evidence():
    return load_script("benchmarks/evidence.py")


def test_batches_are_seeded_crops_and_flips_of_the_images(evidence):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6, 6, 2)).astype("float32")
    y = np.arange(10)
    first = evidence.AugmentedBatches(x, y, 4, seed=7)
    second = evidence.AugmentedBatches(x, y, 4, seed=7)
    first.set_epoch(2)
    second.set_epoch(2)
    assert len(first) == 3
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    seen = []
    for index in range(len(first)):
        crops, labels = first[index]
        np.testing.assert_array_equal(crops, second[index][0])
        for crop, label in zip(crops, labels):
            seen.append(label)
            windows = [
                padded[label, i:i + 6, j:j + 6]
                for i in range(9) for j in range(9)
            ]
            windows += [w[:, ::-1] for w in windows]
            assert any(np.array_equal(crop, w) for w in windows)
    assert sorted(seen) == list(range(10))
    plain = evidence.AugmentedBatches(x, y, 4, seed=7, augment=False)
    crops, labels = plain[0]
    np.testing.assert_array_equal(crops, x[labels])


def test_paired_interval_matches_scipy(evidence):
    rows = []
    pairs = [(40.0, 38.5), (41.0, 39.0), (39.5, 39.0)]
    for seed, (sgd, sam) in enumerate(pairs):
        for arm, error in (("sgd", sgd), ("sam", sam)):
            rows.append({"setting": "noise40", "arm": arm, "seed": seed,
                         "test_error": error})
    settings = {"settings": {"noise40": 0.4}, "epochs": 1,
                "sgd_epoch_multiplier": None}
    (difference,) = [
        s for s in evidence.summarize(rows, settings)
        if s["quantity"] == "sam - sgd"
    ]
    d = np.array([-1.5, -2.0, -0.5])
    low, high = stats.t.interval(
        0.95, df=2, loc=d.mean(), scale=stats.sem(d)
    )
    assert difference["mean"] == pytest.approx(d.mean())
    assert difference["half_width"] == pytest.approx((high - low) / 2)
    assert difference["verdict"] == (
        "SAM better" if high < 0 else "no difference shown"
    )


def test_fraction_of_sams_gain_matches_its_definition(evidence):
    errors = {"sgd": [60.0, 58.0, 61.0], "sam": [48.0, 49.0, 50.0],
              "saf": [57.0, 55.0, 60.0]}
    rows = [{"setting": "noise40", "arm": arm, "seed": seed,
             "test_error": error}
            for arm, values in errors.items()
            for seed, error in enumerate(values)]
    settings = {"settings": {"noise40": 0.4}, "epochs": 1,
                "sgd_epoch_multiplier": None,
                "variant_arms": {"saf": {"SAF": {}}}}
    (row,) = [s for s in evidence.summarize(rows, settings)
              if s["quantity"] == "saf: fraction of SAM's gain kept"]
    f = np.array([3 / 12, 3 / 9, 1 / 11])
    low, high = stats.t.interval(0.95, df=2, loc=f.mean(), scale=stats.sem(f))
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(f.mean())
    assert row["half_width"] == pytest.approx((high - low) / 2)


def test_killed_grid_resumes_without_repeating(evidence, tmp_path):
    data_dir = fake_cifar_dir(tmp_path)
    settings = dict(
        evidence.PROTOCOL, train_size=20, epochs=1, seeds=[0],
        sgd_epoch_multiplier=None, settings={"noise40": 0.4},
        width=2, probe_size=8, lanczos_iterations=2, trace_samples=1,
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--data-dir"):
        evidence.run_grid(out, tmp_path / "nowhere", settings)
    assert not out.exists()  # a failed start leaves nothing
    assert evidence.run_grid(out, data_dir, settings, max_runs=1,
                             verbose=0) == 1
    assert evidence.run_grid(out, data_dir, settings, verbose=0) == 1
    rows = _run_records.read_csv(out / "runs.csv")
    assert [(r["arm"], r["seed"]) for r in rows] == [("sgd", "0"),
                                                     ("sam", "0")]
    assert rows[0]["init_digest"] == rows[1]["init_digest"]
    assert evidence.run_grid(out, data_dir, settings, verbose=0) == 0
    with pytest.raises(ValueError, match="other settings"):
        evidence.run_grid(out, data_dir, dict(settings, rho=0.2))
    assert (out / "table.md").exists()
