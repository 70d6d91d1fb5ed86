"""ESAM's weight masks and RandomizedSAM's step decisions as random draws:
their rates, their independence across steps and entries, and the same
draws on every backend. Checked against what the draws must satisfy,
not against a copy of the code's constants (the NumPy hash that
reproduces the masks bit for bit is tested in test_rules.py)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_sam import rules

pytestmark = pytest.mark.multi_backend

# An event of probability p over n independent draws: its count lies
# within 5 standard deviations of n p except with probability < 1e-6.
SIGMAS = 5.0


def _assert_rate(count, n, p, what):
    bound = SIGMAS * np.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= bound, (
        f"{what}: {count} of {n}, expected {n * p:.1f} +- {bound:.1f}"
    )


def _masks(step, seed, fraction, shapes=((300, 200), (1000,), (7, 11, 13))):
    masks = rules.weight_masks(shapes, step, seed, fraction)
    return np.concatenate(
        [keras.ops.convert_to_numpy(m).ravel() for m in masks]
    )


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_esam_masks_have_the_rate_and_are_independent(fraction):
    first, second = _masks(3, 0, fraction), _masks(4, 0, fraction)
    n = first.size
    _assert_rate(first.sum(), n, fraction, "entries kept")
    # Across steps: an entry kept at both steps with probability f^2.
    _assert_rate((first & second).sum(), n, fraction**2, "kept twice")
    # Across entries: neighbours kept together with probability f^2.
    _assert_rate((first[:-1] & first[1:]).sum(), n - 1, fraction**2,
                 "neighbours kept")
    # Across seeds: a new seed is a new draw.
    other_seed = _masks(3, 1, fraction)
    _assert_rate((first & other_seed).sum(), n, fraction**2,
                 "kept under two seeds")


def _decisions(probability, seed, steps=4000):
    rule = rules.RandomizedSAM(probability=probability, seed=seed)
    # The decision is elementwise in the step: all steps in one call.
    steps = keras.ops.arange(steps, dtype="int32")
    return keras.ops.convert_to_numpy(rule.ascends_at(steps, [])).astype(bool)


@pytest.mark.parametrize("probability", [0.2, 0.5])
def test_randomized_sam_decisions_have_the_rate_and_are_independent(
    probability,
):
    decisions = _decisions(probability, seed=0)
    n = decisions.size
    _assert_rate(decisions.sum(), n, probability, "ascents")
    _assert_rate((decisions[:-1] & decisions[1:]).sum(), n - 1,
                 probability**2, "ascents on consecutive steps")
    _assert_rate((decisions & _decisions(probability, seed=1)).sum(), n,
                 probability**2, "ascents under two seeds")


_OTHER_BACKEND_SCRIPT = """
import json, keras, numpy as np
from keras_sam import rules
masks = rules.weight_masks(((300, 200), (1000,), (7, 11, 13)), 3, 0, 0.5)
flat = np.concatenate([keras.ops.convert_to_numpy(m).ravel() for m in masks])
rule = rules.RandomizedSAM(probability=0.5, seed=0)
decisions = keras.ops.convert_to_numpy(
    rule.ascends_at(keras.ops.arange(200, dtype="int32"), [])).tolist()
print(json.dumps({"masks": np.flatnonzero(flat).tolist(),
                  "decisions": decisions}))
"""


def test_draws_are_the_same_on_another_backend():
    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    environment = dict(os.environ, KERAS_BACKEND=other,
                       TF_CPP_MIN_LOG_LEVEL="3")
    output = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND_SCRIPT], env=environment,
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    theirs = json.loads(output.strip().splitlines()[-1])
    assert np.flatnonzero(_masks(3, 0, 0.5)).tolist() == theirs["masks"]
    assert _decisions(0.5, seed=0, steps=200).tolist() == theirs["decisions"]
