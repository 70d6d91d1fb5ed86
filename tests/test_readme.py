"""README.md, the front page: short, its example runs as written, its
links lead to files of the repository, and it keeps the test command CI
runs (`.ci/run`)."""

import os
import pathlib
import re
import sys

from scripts import run_ok

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_LINK = re.compile(r"!?\[[^\]]+\]\(([^)\s]+)\)")


def _lines():
    return README.read_text().splitlines()


def _first_python_block():
    lines = _lines()
    start = lines.index("```python")
    end = lines.index("```", start + 1)
    return start, "\n".join(lines[start + 1 : end]) + "\n"


def test_readme_is_a_front_page():
    assert len(_lines()) <= 200
    start, example = _first_python_block()
    assert start < 60
    assert 15 <= len(example.splitlines()) <= 20
    assert "keras_sam.SAMModel(" in example


def test_readme_example_runs(tmp_path):
    _, example = _first_python_block()
    script = tmp_path / "example.py"
    script.write_text(example)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    result = run_ok(
        [sys.executable, str(script)], env=env, cwd=tmp_path, timeout=300
    )
    sharpness = re.findall(r"^\[(.*)\]$", result.stdout, re.M)
    assert len(sharpness) == 1
    assert len(sharpness[0].split(",")) == 5  # one value per epoch
    assert (tmp_path / "sam.keras").is_file()


def test_readme_links_lead_to_repository_files():
    for target in _LINK.findall(README.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path = target.partition("#")[0]
        assert (ROOT / path).exists(), target


def test_ci_test_command_follows_its_marker():
    # `.ci/run`: grep -A2 'ci: test command' README.md | grep '^pip install'
    lines = _lines()
    marker = [i for i, line in enumerate(lines) if "ci: test command" in line]
    assert len(marker) == 1
    following = lines[marker[0] + 1 : marker[0] + 3]
    commands = [line for line in following if line.startswith("pip install")]
    assert commands and "pytest" in commands[0]
