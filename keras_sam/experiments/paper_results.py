"""Tables 1 and 2 of the SAM paper (Foret et al., 2020), stored once as data.

Table 1: test error rates in percent on CIFAR-10 and CIFAR-100, SAM
against the standard (non-SAM) training of each model, mean and 95%
confidence interval over 5 runs. The table gives the number of epochs for
the WRN-28-10 rows only (the paper's appendix describes the others);
`epochs` is `None` there.

Table 2: top-1 and top-5 test error rates in percent of ResNet-50, -101
and -152 on ImageNet, trained 100, 200 and 400 epochs with and without
SAM (the same epochs for both).

Intervals are kept as printed (`"0.1"`, `"<0.1"`, `"<0.01"`).
`keras-sam reproduce` prints the matching row next to its own numbers.
"""

import collections

PaperRow = collections.namedtuple(
    "PaperRow",
    [
        "model_label",
        "model_name",
        "epochs",
        "augment",
        "dataset",
        "sam_error",
        "sam_interval",
        "sgd_error",
        "sgd_interval",
    ],
)

ImageNetRow = collections.namedtuple(
    "ImageNetRow",
    [
        "model_label",
        "model_name",
        "epochs",
        "sam_top1",
        "sam_top1_interval",
        "sam_top5",
        "sam_top5_interval",
        "sgd_top1",
        "sgd_top1_interval",
        "sgd_top5",
        "sgd_top5_interval",
    ],
)

AUGMENT_LABELS = {"basic": "Basic", "cutout": "Cutout", "autoaugment": "AA"}

# (model label, keras_sam model name, epochs) and, per augmentation, the
# CIFAR-10 SAM, CIFAR-10 SGD, CIFAR-100 SAM, CIFAR-100 SGD cells.
_TABLE_1 = (
    (
        ("WRN-28-10 (200 epochs)", "wrn-28-10", 200),
        {
            "basic": ("2.7 0.1", "3.5 0.1", "16.5 0.2", "18.8 0.2"),
            "cutout": ("2.3 0.1", "2.6 0.1", "14.9 0.2", "16.9 0.1"),
            "autoaugment": ("2.1 <0.1", "2.3 0.1", "13.6 0.2", "15.8 0.2"),
        },
    ),
    (
        ("WRN-28-10 (1800 epochs)", "wrn-28-10", 1800),
        {
            "basic": ("2.4 0.1", "3.5 0.1", "16.3 0.2", "19.1 0.1"),
            "cutout": ("2.1 0.1", "2.7 0.1", "14.0 0.1", "17.4 0.1"),
            "autoaugment": ("1.6 0.1", "2.2 <0.1", "12.8 0.2", "16.1 0.2"),
        },
    ),
    (
        ("Shake-Shake (26 2x96d)", "shake-shake-26-2x96d", None),
        {
            "basic": ("2.3 <0.1", "2.7 0.1", "15.1 0.1", "17.0 0.1"),
            "cutout": ("2.0 <0.1", "2.3 0.1", "14.2 0.2", "15.7 0.2"),
            "autoaugment": ("1.6 <0.1", "1.9 0.1", "12.8 0.1", "14.1 0.2"),
        },
    ),
    (
        ("PyramidNet", "pyramidnet-272-200", None),
        {
            "basic": ("2.7 0.1", "4.0 0.1", "14.6 0.4", "19.7 0.3"),
            "cutout": ("1.9 0.1", "2.5 0.1", "12.6 0.2", "16.4 0.1"),
            "autoaugment": ("1.6 0.1", "1.9 0.1", "11.6 0.1", "14.6 0.1"),
        },
    ),
    (
        ("PyramidNet+ShakeDrop", "pyramidnet-272-200-shakedrop", None),
        {
            "basic": ("2.1 0.1", "2.5 0.1", "13.3 0.2", "14.5 0.1"),
            "cutout": ("1.6 <0.1", "1.9 0.1", "11.3 0.1", "11.8 0.2"),
            "autoaugment": ("1.4 <0.1", "1.6 <0.1", "10.3 0.1", "10.6 0.1"),
        },
    ),
)


def _rows():
    rows = []
    for (label, name, epochs), cells in _TABLE_1:
        for augment, (c10_sam, c10_sgd, c100_sam, c100_sgd) in cells.items():
            for dataset, sam, sgd in (
                ("cifar10", c10_sam, c10_sgd),
                ("cifar100", c100_sam, c100_sgd),
            ):
                sam_error, sam_interval = sam.split()
                sgd_error, sgd_interval = sgd.split()
                rows.append(
                    PaperRow(
                        label,
                        name,
                        epochs,
                        augment,
                        dataset,
                        float(sam_error),
                        sam_interval,
                        float(sgd_error),
                        sgd_interval,
                    )
                )
    return tuple(rows)


TABLE_1 = _rows()

# (model label, keras_sam model name) and, per epochs, the SAM top-1,
# SAM top-5, standard top-1 and standard top-5 cells.
_TABLE_2 = (
    (
        ("ResNet-50", "resnet-50"),
        {
            100: ("22.5 0.1", "6.28 0.08", "22.9 0.1", "6.62 0.11"),
            200: ("21.4 0.1", "5.82 0.03", "22.3 0.1", "6.37 0.04"),
            400: ("20.9 0.1", "5.51 0.03", "22.3 0.1", "6.40 0.06"),
        },
    ),
    (
        ("ResNet-101", "resnet-101"),
        {
            100: ("20.2 0.1", "5.12 0.03", "21.2 0.1", "5.66 0.05"),
            200: ("19.4 0.1", "4.76 0.03", "20.9 0.1", "5.66 0.04"),
            400: ("19.0 <0.01", "4.65 0.05", "22.3 0.1", "6.41 0.06"),
        },
    ),
    (
        ("ResNet-152", "resnet-152"),
        {
            100: ("19.2 <0.01", "4.69 0.04", "20.4 <0.0", "5.39 0.06"),
            200: ("18.5 0.1", "4.37 0.03", "20.3 0.2", "5.39 0.07"),
            400: ("18.4 <0.01", "4.35 0.04", "20.9 <0.0", "5.84 0.07"),
        },
    ),
)


def _imagenet_rows():
    rows = []
    for (label, name), cells in _TABLE_2:
        for epochs, values in cells.items():
            numbers = []
            for value in values:
                error, interval = value.split()
                numbers += [float(error), interval]
            rows.append(ImageNetRow(label, name, epochs, *numbers))
    return tuple(rows)


TABLE_2 = _imagenet_rows()

REFERENCE = (
    "Foret et al., 2020. Sharpness-Aware Minimization for Efficiently "
    "Improving Generalization, Tables 1 and 2. "
    "https://arxiv.org/abs/2010.01412"
)


def find_imagenet_row(model_name, epochs=None):
    """The Table 2 row of an ImageNet setting, or `None`.

    Args:
        model_name: `"resnet-50"`, `"resnet-101"` or `"resnet-152"`.
        epochs: the run's epochs (100, 200 or 400), or `None` for the
            100-epoch row. Defaults to `None`.

    Returns:
        An `ImageNetRow` or `None`.

    Example:

    >>> row = find_imagenet_row("resnet-50", 100)
    >>> row.sam_top1, row.sgd_top1
    (22.5, 22.9)
    """
    epochs = 100 if epochs is None else epochs
    for row in TABLE_2:
        if (row.model_name, row.epochs) == (model_name, epochs):
            return row
    return None


def find_row(model_name, augment, dataset, epochs=None):
    """The Table 1 row of a setting, or `None`.

    Args:
        model_name: a `keras_sam.models` name, e.g. `"wrn-28-10"`.
        augment: `"basic"`, `"cutout"` or `"autoaugment"`.
        dataset: `"cifar10"` or `"cifar100"`.
        epochs: the SAM run's epochs; must match where the table states
            them (WRN-28-10: 200 or 1800). Defaults to `None` (any).

    Returns:
        A `PaperRow` or `None`.
    """
    for row in TABLE_1:
        if (row.model_name, row.augment, row.dataset) != (
            model_name,
            augment,
            dataset,
        ):
            continue
        if row.epochs is None or epochs is None or row.epochs == epochs:
            return row
    return None


def reference_row(model_name, augment, dataset, epochs=None):
    """The row to print beside a run: its own, else the WRN-28-10
    200-epoch row of the same augmentation and dataset.

    Args:
        model_name: a `keras_sam.models` name.
        augment: the run's augmentation (`"randaugment"` and `"none"`
            fall back to the `"basic"` row).
        dataset: `"cifar10"` or `"cifar100"`.
        epochs: the SAM run's epochs. Defaults to `None`.

    Returns:
        A tuple `(row, same_setting)`: the `PaperRow` (or `None` for a
        dataset not in the table) and whether it is the run's own
        setting.
    """
    row = find_row(model_name, augment, dataset, epochs)
    if row is not None:
        return row, True
    fallback = augment if augment in AUGMENT_LABELS else "basic"
    return find_row("wrn-28-10", fallback, dataset, 200), False
