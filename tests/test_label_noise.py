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
