"""benchmarks/variant_cost.py on a tiny model: every arm timed every
round, ratios taken against the same round's plain block."""

import csv

import pytest
from scripts import load_script

variant_cost = load_script("benchmarks/variant_cost.py")


@pytest.mark.slow
def test_every_arm_is_timed_every_round_against_plain(tmp_path):
    assert variant_cost.main([
        "--rounds", "2", "--block", "2", "--batch-size", "4", "--width",
        "2", "--output-dir", str(tmp_path),
    ]) == 0
    rows = list(csv.DictReader(next(tmp_path.glob("variant_cost_*.csv"))
                               .open()))
    names = list(variant_cost.arms(0.05))
    assert [r["arm"] for r in rows] == names * 2
    for r in rows:
        plain = next(p for p in rows
                     if p["arm"] == "plain" and p["round"] == r["round"])
        ratio = float(r["seconds"]) / float(plain["seconds"])
        assert float(r["ratio_to_plain"]) == pytest.approx(ratio)
    fraction = {r["arm"]: float(r["sam_step_fraction"]) for r in rows}
    assert fraction["plain"] == fraction["MomentumSAM"] == 0.0
    assert fraction["SAM"] == 1.0 and fraction["LateSAM, before start"] == 0
    readme = (tmp_path / "README.md").read_text()
    assert all(f"| {name} |" in readme for name in names)
