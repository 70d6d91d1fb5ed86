"""The package version, in a module of its own (private).

`setup.cfg` reads it (`version = attr: keras_sam._version.__version__`)
and the `keras-sam` command line prints it, both without importing
`keras_sam/__init__.py`, which imports Keras: a build environment has no
Keras, and `keras-sam --version` answers before Keras is imported.
"""

__version__ = "0.1.0"
