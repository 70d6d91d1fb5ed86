"""Symmetric label noise: exactly the fraction, always a wrong class."""

import numpy as np
import pytest

from keras_sam.experiments.label_noise import symmetric_label_noise


def test_noise_flips_exactly_the_fraction_to_other_classes():
    labels = np.repeat(np.arange(10), 50)
    noisy, is_noisy = symmetric_label_noise(labels, 0.4, 10, seed=3)
    assert is_noisy.sum() == 200
    np.testing.assert_array_equal(noisy != labels, is_noisy)
    assert noisy.min() >= 0 and noisy.max() <= 9
    # Every wrong class is reachable: the new labels are spread out.
    assert len(np.unique(noisy[is_noisy] - labels[is_noisy])) > 5
    again, _ = symmetric_label_noise(labels, 0.4, 10, seed=3)
    np.testing.assert_array_equal(noisy, again)
    with pytest.raises(ValueError, match="fraction=1.5"):
        symmetric_label_noise(labels, 1.5, 10, seed=0)


def test_noise_of_zero_fraction_is_the_identity():
    labels = np.arange(20) % 4
    noisy, is_noisy = symmetric_label_noise(labels, 0.0, 4, seed=0)
    np.testing.assert_array_equal(noisy, labels)
    assert not is_noisy.any()


@pytest.mark.parametrize(
    "size, fraction", [(2000, 0.4), (512, 0.4), (1000, 0.25), (7, 0.5)]
)
def test_label_noise_moves_exactly_the_stated_share(size, fraction):
    labels = np.arange(size) % 10
    noisy, is_wrong = symmetric_label_noise(labels, fraction, seed=3)
    # Counted independently: the labels that differ from the originals.
    differs = noisy != labels
    assert differs.sum() == round(fraction * size)
    np.testing.assert_array_equal(is_wrong, differs)
    assert noisy.dtype == np.int64 and is_wrong.dtype == bool
    assert noisy.min() >= 0 and noisy.max() <= 9
    # The original labels are not changed in place.
    np.testing.assert_array_equal(labels, np.arange(size) % 10)


def test_label_noise_is_uniform_over_the_other_classes():
    labels = np.repeat(np.arange(10), 9000)
    noisy, is_wrong = symmetric_label_noise(labels, 0.5, seed=0)
    offsets = (noisy[is_wrong] - labels[is_wrong]) % 10
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0
    # 45,000 draws over 9 offsets: 5,000 expected each, std about 67.
    np.testing.assert_allclose(counts[1:], 5000, atol=400)


def test_label_noise_is_deterministic_by_seed():
    labels = np.arange(2000) % 10
    first = symmetric_label_noise(labels, 0.4, seed=0)
    again = symmetric_label_noise(labels, 0.4, seed=0)
    other = symmetric_label_noise(labels, 0.4, seed=1)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert (first[1] != other[1]).any()
    # The demo's default draw is the fixed NOISE_SEED.
    default = symmetric_label_noise(labels, 0.4)
    np.testing.assert_array_equal(default[0], first[0])


def test_label_noise_zero_changes_nothing():
    labels = np.arange(50) % 10
    noisy, is_wrong = symmetric_label_noise(labels, 0.0)
    np.testing.assert_array_equal(noisy, labels)
    assert not is_wrong.any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": 1.0}, "Argument `fraction` must be in [0, 1). "
         "Received: fraction=1.0."),
        ({"fraction": -0.1}, "Received: fraction=-0.1."),
        ({"fraction": 0.4, "num_classes": 1}, "Received: num_classes=1."),
    ],
)
def test_label_noise_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as error:
        symmetric_label_noise(np.zeros(10, int), **kwargs)
    assert message in str(error.value)
    assert len(str(error.value).splitlines()) == 1
