"""Loads the scripts of `benchmarks/` and `tutorials/` as modules, for the
tests that call their functions."""

import importlib.util
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_script(relative_path):
    """Runs `REPO_ROOT / relative_path` as a module named after the file
    (its `__main__` block does not run) and returns the module."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
