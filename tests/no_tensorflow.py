"""A `sitecustomize.py` that makes TensorFlow unimportable, for the tests
that run a subprocess as on a machine without it (the GPU machine)."""

import pathlib

SITECUSTOMIZE = '''
import sys


class _NoTensorFlow:
    """Refuses to import tensorflow and tensorflow_datasets."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"{name} is blocked for this test")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


def write_blocker(folder):
    """Writes `folder/sitecustomize.py` (the folder made if needed) and
    returns the folder, to put first on the subprocess's `PYTHONPATH`."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder
