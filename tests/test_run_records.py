"""Run records: the commit and its dirty flag, CSV, JSON and README
sections, checked against git and the files themselves."""

import subprocess

import pytest

from keras_sam.experiments import _run_records


def _git(*arguments):
    return subprocess.run(
        ["git", "-C", str(_run_records._CHECKOUT), *arguments],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def test_commit_is_the_checkout_head_dirty_only_for_tracked_changes(
    monkeypatch,
):
    monkeypatch.delenv(_run_records.COMMIT_ENVIRONMENT_VARIABLE, raising=False)
    try:
        head = _git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    tracked = _git("status", "--porcelain", "--untracked-files=no")
    expected = head + ("+dirty" if tracked else "")
    assert _run_records.git_commit() == expected
    assert _run_records.environment()["commit"] == expected


def test_commit_from_the_environment_where_there_is_no_git(monkeypatch):
    monkeypatch.setenv(_run_records.COMMIT_ENVIRONMENT_VARIABLE, "abc1234")
    assert _run_records.git_commit() == "abc1234"


def test_hardware_names_the_processor_and_cores():
    assert _run_records.hardware() == (
        f"CPU: {_run_records.processor_name()}, "
        f"{_run_records.cpu_count()} cores"
    )
    assert _run_records.cpu_count() >= 1


def test_csv_rows_and_a_missing_file(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,x\n2,\"y, z\"\n")
    assert _run_records.read_csv(path) == [
        {"a": "1", "b": "x"},
        {"a": "2", "b": "y, z"},
    ]
    assert _run_records.read_csv(tmp_path / "none.csv", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        _run_records.read_csv(tmp_path / "none.csv")


def test_json_is_written_whole(tmp_path):
    path = tmp_path / "record.json"
    _run_records.write_json(path, {"seed": 0})
    assert path.read_text() == '{\n  "seed": 0\n}\n'
    assert not list(tmp_path.glob("*.tmp"))


def test_readme_section_is_replaced_or_appended(tmp_path):
    begin, end = "<!-- begin -->", "<!-- end -->"
    section = f"{begin}\nnew\n{end}"
    readme = _run_records.write_readme_section(tmp_path, begin, end, section)
    assert readme.read_text() == (
        "# Benchmarks\n\nTiming results written by `benchmarks/`.\n\n"
        f"{section}\n"
    )
    readme.write_text(f"# Notes\n\nbefore\n{begin}\nold\n{end}\nafter\n")
    _run_records.write_readme_section(tmp_path, begin, end, section)
    assert readme.read_text() == f"# Notes\n\nbefore\n{section}\nafter\n"
    assert _run_records.replace_readme_section(
        "text\n", begin, end, section
    ) == f"text\n\n{section}\n"
