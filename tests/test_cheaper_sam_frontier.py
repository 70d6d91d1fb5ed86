"""benchmarks/cheaper_sam_frontier.py on a generated evidence tree: every
arm's mean and t interval, its measured cost, LateSAM's schedule mix."""

import csv
import json

import numpy as np
import pytest
from scripts import load_script

frontier = load_script("benchmarks/cheaper_sam_frontier.py")

T_975_DF2 = 4.302652729749464  # Student t quantile, 2 degrees of freedom
ERRORS = {"sgd": [30.0, 32.0, 34.0], "sam": [29.0, 30.0, 31.5],
          "late_sam": [31.0, 31.0, 32.5], "aesam": [30.0, 31.0, 33.0],
          "saf": [30.5, 31.5, 33.0]}


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_tree(root, start_step=90):
    arms_of = {"evidence_round2": ("sgd", "sam"),
               "evidence_variants": (),
               "evidence_cheaper": ("late_sam",),
               "evidence_cheaper_round5": ("aesam",),
               "evidence_trajectory_round6": ("saf",)}
    for folder, arms in arms_of.items():
        path = root / folder
        path.mkdir(parents=True)
        settings = {"settings": {"clean": 0.0}, "train_size": 1000,
                    "batch_size": 100, "epochs": 12}
        if folder == "evidence_cheaper":
            settings["variant_arms"] = {
                "late_sam": {"LateSAM": {"start_step": start_step}}}
        (path / "settings.json").write_text(json.dumps(settings))
        rows = [{"setting": "clean", "arm": arm, "seed": seed,
                 "test_error": ERRORS[arm][seed]}
                for arm in arms for seed in range(3)]
        if rows:
            write_csv(path / "runs.csv", rows)
        else:
            (path / "runs.csv").write_text("setting,arm,seed,test_error\n")
    costs = [{"round": k, "arm": arm, "ratio_to_plain": ratio}
             for k, (sam, before) in enumerate([(2.0, 1.0), (2.2, 1.1),
                                                (1.9, 0.9)])
             for arm, ratio in [("plain", 1.0), ("SAM", sam),
                                ("LateSAM, before start", before)]]
    write_csv(root / "cost.csv", costs)
    # A later, partial run: SAF, and a SAM cost that must not replace the
    # first file's.
    write_csv(root / "cost_saf.csv", [
        {"round": k, "arm": arm, "ratio_to_plain": ratio}
        for k, saf in enumerate([1.10, 1.05, 1.30])
        for arm, ratio in [("plain", 1.0), ("SAM", 3.0), ("SAF", saf)]
    ])
    return [root / "cost.csv", root / "cost_saf.csv"]


def test_means_intervals_and_costs_match_closed_forms(tmp_path):
    cost_csvs = make_tree(tmp_path)
    rows = {r["arm"]: r for r in frontier.frontier(tmp_path, cost_csvs)}
    for arm, errors in ERRORS.items():
        errors = np.array(errors)
        half = T_975_DF2 * errors.std(ddof=1) / np.sqrt(3)
        assert rows[arm]["test_error"] == pytest.approx(errors.mean())
        assert rows[arm]["test_error_half_width"] == pytest.approx(half)
    assert rows["sgd"]["cost_ratio"] == 1.0
    assert rows["sam"]["cost_ratio"] == pytest.approx(2.0)  # median
    # 120 steps, SAM from step 90 on: a quarter of them at SAM's cost.
    assert rows["late_sam"]["cost_ratio"] == pytest.approx(
        0.75 * 1.0 + 0.25 * 2.0)
    assert rows["aesam"]["cost_ratio"] is None
    assert rows["saf"]["cost_ratio"] == pytest.approx(1.10)  # median
    frontier.write(list(rows.values()), tmp_path / "out")
    written = list(csv.DictReader(open(tmp_path / "out" /
                                       "error_vs_cost.csv")))
    assert {r["arm"]: r["cost_ratio"] for r in written}["aesam"] == ""
    assert (tmp_path / "out" / "error_vs_cost.png").stat().st_size > 0


def test_a_start_step_past_the_run_is_refused(tmp_path):
    cost_csvs = make_tree(tmp_path, start_step=500)
    with pytest.raises(ValueError, match="start_step=500"):
        frontier.frontier(tmp_path, cost_csvs)


def test_an_arm_without_a_cost_is_named():
    with pytest.raises(ValueError, match="'mystery'"):
        frontier.arm_cost("mystery", {}, {})
    with pytest.raises(ValueError, match="no arm 'SAM'"):
        frontier.arm_cost("sam", {"plain": 1.0}, {})
