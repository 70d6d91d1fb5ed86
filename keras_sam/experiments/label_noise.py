"""Symmetric label noise: a fixed fraction of labels set to a wrong class.

The noise of Foret et al.'s label-noise experiment (Table 4), used by
`benchmarks/evidence.py`.
"""

import numpy as np


def symmetric_label_noise(labels, fraction, num_classes=10, seed=0):
    """Replaces exactly `round(fraction * N)` labels by a different class.

    The rows are a seeded random choice; each new label is uniform over
    the `num_classes - 1` wrong classes, so exactly that fraction of the
    returned labels is wrong.

    Args:
        labels: Integer array `(N,)` of classes in `[0, num_classes)`.
        fraction: Float in [0, 1), the fraction of labels made wrong.
        num_classes: Integer, the number of classes (at least 2).
            Defaults to `10`.
        seed: Integer seed of the rows and the new labels. Defaults to
            `0`.

    Returns:
        `(noisy_labels, is_noisy)`, int64 and bool arrays of shape `(N,)`.

    Example:

    >>> noisy, is_noisy = symmetric_label_noise(
    ...     np.arange(10) % 3, fraction=0.4, num_classes=3, seed=0)
    >>> int(is_noisy.sum())
    4

    References:
        - Foret et al., 2021. Sharpness-Aware Minimization for Efficiently
          Improving Generalization. https://arxiv.org/abs/2010.01412
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            "Argument `fraction` must be in [0, 1). "
            f"Received: fraction={fraction!r}."
        )
    if num_classes < 2:
        raise ValueError(
            "Argument `num_classes` must be at least 2. "
            f"Received: num_classes={num_classes!r}."
        )
    rng = np.random.default_rng(seed)
    count = int(round(fraction * len(labels)))
    rows = rng.permutation(len(labels))[:count]
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, num_classes, count)) % (
        num_classes
    )
    is_noisy = np.zeros(len(labels), dtype=bool)
    is_noisy[rows] = True
    return noisy, is_noisy
