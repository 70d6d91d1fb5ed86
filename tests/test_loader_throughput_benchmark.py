"""benchmarks/loader_throughput.py on a tiny run: every configuration read
every round, whole epochs counted, the README section written."""

import csv

from scripts import load_script

loader_throughput = load_script("benchmarks/loader_throughput.py")


def test_every_configuration_reads_whole_epochs(tmp_path):
    assert loader_throughput.main([
        "--train-size", "300", "--batch-size", "64", "--rounds", "2",
        "--epochs", "2", "--stage-repeats", "2", "--output-dir",
        str(tmp_path),
    ]) == 0
    rows = list(csv.DictReader((tmp_path / "loader_throughput.csv").open()))
    epochs = [r for r in rows if r["kind"] == "epochs"]
    configurations = [(a, w) for a in ("basic", "cutout") for w in "12"]
    assert [(r["augment"], r["workers"]) for r in epochs] == (
        configurations * 2
    )
    for r in epochs:
        assert int(r["images"]) == 2 * 300  # two whole epochs
        rate = int(r["images"]) / float(r["wall_seconds"])
        assert float(r["images_per_second"]) == rate
    stages = [r["stage"] for r in rows if r["kind"] == "stage"]
    assert stages == ["gather rows", "crop and flip", "normalize", "cutout"]
    readme = (tmp_path / "README.md").read_text()
    assert readme.count(loader_throughput.README_BEGIN) == 1
    assert "| numpy | cutout | 2 |" in readme
