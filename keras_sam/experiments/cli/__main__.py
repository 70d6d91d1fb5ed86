"""`python -m keras_sam.experiments.cli`: the `keras-sam` command."""

import sys

from keras_sam.experiments.cli import main

sys.exit(main())
