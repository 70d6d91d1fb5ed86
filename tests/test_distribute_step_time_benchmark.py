"""Tests for `benchmarks/distribute_step_time.py`'s bookkeeping (no timing).

The timed run needs its own process (it configures two logical CPU
devices and a MirroredStrategy before TensorFlow starts), so only the
summary and the README section are tested here, on made-up times.
"""

import json
import pathlib

import pytest
from scripts import load_script

SCRIPT = (
    pathlib.Path(__file__).resolve().parent.parent
    / "benchmarks"
    / "distribute_step_time.py"
)


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/distribute_step_time.py")


class FakeVariant:
    def __init__(self, name, times):
        self.name, self.times = name, times


def test_summary_pairs_repeats(script):
    variants = [
        FakeVariant("keras_sgd", [0.10, 0.20, 0.30]),
        FakeVariant("sam_replica", [0.20, 0.40, 0.60]),
        FakeVariant("sam_global", [0.25, 0.41, 0.62]),
        FakeVariant("all_reduce", [0.001, 0.002, 0.003]),
    ]
    results, ratios, paired, overhead = script.summarize(variants, 64)
    assert results["sam_replica"]["median_ms"] == pytest.approx(400.0)
    assert results["sam_replica"]["images_per_second"] == pytest.approx(160)
    assert "images_per_second" not in results["all_reduce"]
    assert ratios["sam_replica_over_keras_sgd"] == pytest.approx(2.0)
    assert paired["sam_global_over_sam_replica"] == pytest.approx(0.62 / 0.60)
    # Medians of 410 and 400 ms; within-repeat differences 50, 10, 20 ms.
    assert overhead["global_minus_replica_ms"] == pytest.approx(10.0)
    assert overhead["paired_global_minus_replica_ms"] == pytest.approx(20.0)
    low, high = overhead["paired_difference_quartiles_ms"]
    assert low <= 20.0 <= high
    assert overhead["all_reduce_alone_ms"] == pytest.approx(2.0)


def test_readme_section_is_replaced_and_the_rest_kept(script, tmp_path):
    variants = [
        FakeVariant(name, [0.1, 0.2])
        for name in ("keras_sgd", "sam_replica", "sam_global", "all_reduce")
    ]
    results, ratios, paired, overhead = script.summarize(variants, 64)
    record = {
        "device": "CPU: test, 2 cores",
        "config": {"model": "resnet-20", "batch_size": 64, "replicas": 2,
                   "steps": 8, "repeats": 2},
        "results": results, "ratios": ratios, "paired_ratios": paired,
        "overhead": overhead, "versions": {"keras": "3", "tensorflow": "2"},
        "command": "python benchmarks/distribute_step_time.py",
        "commit": "abc1234", "date": "2026-01-01T00:00:00Z",
        "load_average": 1.5,
    }
    (tmp_path / "distribute_step_time_x.json").write_text(json.dumps(record))
    other = ("<!-- BEGIN step_time.py section (generated, do not edit) -->\n"
             "other table\n<!-- END step_time.py section -->")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nNotes.\n\n{other}\n\n"
                      f"{script.README_BEGIN}\nstale\n{script.README_END}\n"
                      "Trailing notes.\n")
    script.regenerate_readme(tmp_path)
    text = readme.read_text()
    assert other in text
    assert "stale" not in text
    assert text.startswith("# Benchmarks\n\nNotes.\n")
    assert text.endswith(f"{script.README_END}\nTrailing notes.\n")
    assert "| `distribute_step_time_x.json` |" in text
    assert "64 (32)" in text
    assert text.count(script.README_BEGIN) == 1
    # Equal times: a zero difference, inside its (zero) quartiles.
    assert "below the noise of the step time" in text
