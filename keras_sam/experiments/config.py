"""`RunConfig`: every setting of one experiment run, as one object.

The `keras-sam` command builds a `RunConfig` from its arguments and hands
it down; `reproduce`, `sweep`, `tuning`, `training` and `demo` read the
settings they need from it instead of taking them one keyword at a time.
`RunConfig.settings()` is the JSON saved with a `keras-sam reproduce` run
(`settings.json`): a run started again into the same folder resumes only
when its settings are the same.

The defaults are the SAM paper's CIFAR recipe (Foret et al., 2020): SGD
with Nesterov momentum 0.9, a cosine learning-rate schedule from 0.1 to
zero over the run (no warm-up), batch size 256, coupled L2 weight decay
5e-4 (added to the gradient, so momentum sees it), 200 epochs, `rho`
chosen from `PAPER_RHO_GRID` on 10% of the training set held out, 5
seeds, the SGD baseline with twice the epochs. `IMAGENET_RECIPE` holds the
paper's ImageNet settings (Table 2), which `keras-sam reproduce --dataset
imagenet2012` starts from.
"""

import dataclasses
import json
import pathlib

from keras_sam.experiments._run_records import write_json

PAPER_RHO_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
WEIGHT_DECAY_KIND = "coupled L2 (gradient weight_decay * w)"
SCHEDULE = "cosine to 0 over the run, no warm-up"
# Settings of how a run is shown and recorded, not of what it computes:
# left out of `settings()`, so they never block a resume.
_RUN_ONLY_FIELDS = ("verbose", "command", "manual_dir")

IMAGENET = "imagenet2012"
"""The `dataset` name of ImageNet (ILSVRC-2012), as tfds names it."""

# Foret et al. (2020), Appendix C, ImageNet (Table 2), as read there: the
# reference text in this repository holds Table 2 but not the appendix,
# so check these against arXiv:2010.01412 before a costly run. Batch 4096,
# SGD with momentum 0.9, cosine schedule from 1.0, weight decay 1e-4,
# label smoothing 0.1, rho 0.05 (their grid search on ResNet-50 at 100
# epochs), SAM and the baseline at the same epochs. No warm-up is stated.
IMAGENET_RECIPE = {
    "model": "resnet-50",
    "epochs": 100,
    "batch_size": 4096,
    "learning_rate": 1.0,
    "weight_decay": 1e-4,
    "label_smoothing": 0.1,
    "rho": 0.05,
    "sgd_epoch_multiplier": 1,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings of one `keras-sam sweep`, `reproduce` or `demo` run.

    Args:
        dataset: `"cifar10"`, `"cifar100"` or `"imagenet2012"` (see
            `keras_sam.experiments.imagenet`). Defaults to `"cifar10"`.
        data_dir: see `keras_sam.experiments.datasets.load_splits` (for
            ImageNet, `keras_sam.experiments.imagenet.make_pipelines`).
            Defaults to `None`.
        manual_dir: ImageNet from tfds only: the folder of the ILSVRC-2012
            tar files, to prepare `imagenet2012` from. Not a setting of
            the run (left out of `settings()`). Defaults to `None`.
        source: see `keras_sam.experiments.datasets.load_splits`.
            Defaults to `"auto"`.
        model: a `keras_sam.models` name. Defaults to `"wrn-28-10"`.
        augment: training augmentation, one of
            `keras_sam.experiments.data_pipeline.AUGMENTATIONS` (for
            ImageNet, `"basic"` is the Inception-style crop and flip).
            Defaults to `"basic"`.
        image_size: ImageNet only: side of the network's input, `None`
            for 224. Defaults to `None`.
        epochs: training epochs (SAM's, in `reproduce`). Defaults to
            `200`.
        seeds: number of seeds (`0 .. seeds - 1`) of `reproduce`'s final
            runs. Defaults to `5`.
        rho: SAM radius; `None` makes `reproduce` choose it from
            `rho_grid` on the held-out split. Defaults to `None`.
        rho_grid: candidates for `rho`. Defaults to `PAPER_RHO_GRID`.
        select_seeds: seeds per candidate when choosing `rho`. Defaults
            to `1`.
        select_epochs: epochs of the selection runs, `None` for `epochs`.
            Defaults to `None`.
        batch_size: batch size. Defaults to `256`.
        learning_rate: peak of the cosine schedule. Defaults to `0.1`.
        momentum: SGD momentum. Defaults to `0.9`.
        nesterov: Nesterov momentum. Defaults to `True`.
        weight_decay: coupled L2 coefficient (gradient
            `weight_decay * w`). Defaults to `5e-4`.
        label_smoothing: label smoothing of the cross-entropy (Szegedy et
            al., 2016; the paper's ImageNet runs use 0.1). Defaults to
            `0.0`.
        sgd_epoch_multiplier: the SGD baseline of `reproduce` trains
            `epochs` times this. Defaults to `2`.
        validation_fraction: fraction of the training images held out to
            choose `rho` (the objective of a sweep). Defaults to `0.1`.
        train_size: class-balanced subset of the training images, or
            `None` for all. Defaults to `None`.
        test_size: class-balanced subset of the test images, or `None`.
            Defaults to `None`.
        split_seed: seed of the subsets and of the held-out split.
            Defaults to `0`.
        distribute: how the batch is spread over devices and hosts, one
            of `keras_sam.experiments.training.DISTRIBUTIONS` (`"none"`,
            `"mirrored"`, `"multi-worker"`, `"data-parallel"`; see
            `training.distribution_scope` for the `m` each gives).
            Defaults to `"none"`.
        mixed_precision: `None`, `"bfloat16"` or `"float16"`: the Keras
            dtype policy `mixed_<...>` to train under (GPU). Defaults to
            `None` (float32).
        verbose: Keras `fit` verbosity (1: progress bars). Defaults to
            `1`.
        command: the command line to record, or `None` for `sys.argv`.
            Defaults to `None`.

    Example:

    >>> config = RunConfig(model="wrn-16-8", epochs=100, rho=0.05)
    >>> config.replace(seeds=3).settings()["seeds"]
    3
    """

    # The field order is the key order of `settings.json`.
    dataset: str = "cifar10"
    data_dir: str | None = None
    manual_dir: str | None = None
    source: str = "auto"
    model: str = "wrn-28-10"
    augment: str = "basic"
    image_size: int | None = None
    epochs: int = 200
    seeds: int = 5
    rho: float | None = None
    rho_grid: tuple = PAPER_RHO_GRID
    select_seeds: int = 1
    select_epochs: int | None = None
    batch_size: int = 256
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    sgd_epoch_multiplier: int = 2
    validation_fraction: float = 0.1
    train_size: int | None = None
    test_size: int | None = None
    split_seed: int = 0
    distribute: str = "none"
    mixed_precision: str | None = None
    verbose: int = 1
    command: str | None = None

    def __post_init__(self):
        # JSON gives lists and paths come as `pathlib.Path`: store the
        # canonical forms, so equal settings compare (and hash) equal.
        object.__setattr__(self, "rho_grid", tuple(self.rho_grid))
        for name in ("data_dir", "manual_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))

    def replace(self, **changes):
        """A copy with `changes` applied (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def settings(self):
        """The settings as a JSON-ready dict, as saved in `settings.json`.

        Leaves out `verbose` and `command` (how the run is shown, not what
        it computes), resolves `select_epochs`, and records the weight
        decay's and the schedule's kind next to their values.
        """
        settings = {}
        for field in dataclasses.fields(self):
            if field.name in _RUN_ONLY_FIELDS:
                continue
            settings[field.name] = getattr(self, field.name)
            if field.name == "weight_decay":
                settings["weight_decay_kind"] = WEIGHT_DECAY_KIND
                settings["schedule"] = SCHEDULE
        settings["rho_grid"] = list(self.rho_grid)
        settings["select_epochs"] = self.select_epochs or self.epochs
        return settings

    @classmethod
    def from_settings(cls, settings):
        """The `RunConfig` of a saved `settings()` dict (or file's JSON).

        Keys that are not fields (`weight_decay_kind`, `schedule`) are
        ignored.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})

    def load_splits(self, validation_fraction=None):
        """The dataset's splits (`datasets.load_splits`) for these settings.

        Args:
            validation_fraction: fraction held out, or `None` for the
                config's `validation_fraction`. Defaults to `None`.

        Returns:
            A `keras_sam.experiments.datasets.CifarSplits`.
        """
        from keras_sam.experiments import datasets

        if validation_fraction is None:
            validation_fraction = self.validation_fraction
        return datasets.load_splits(
            self.dataset,
            data_dir=self.data_dir,
            source=self.source,
            validation_fraction=validation_fraction,
            train_size=self.train_size,
            test_size=self.test_size,
            split_seed=self.split_seed,
        )


def check_same_settings(path, config, write=True):
    """Writes `config.settings()` to `path`, or checks it against the file.

    A folder holds the runs of one set of settings: starting a run into
    it with other settings would mix them, so it is refused.

    Args:
        path: the `settings.json` of a run folder.
        config: the `RunConfig` of the run being started.
        write: whether to write the settings when `path` does not exist
            yet. `False` only checks, so that a run that fails before it
            starts leaves nothing behind. Defaults to `True`.

    A setting the file lacks (it was written before the setting existed)
    counts as that setting's default.

    Raises:
        ValueError: when `path` holds other settings; the message names
            every differing setting with both values.
    """
    path = pathlib.Path(path)
    settings = config.settings()
    defaults = RunConfig().settings()
    if not path.is_file():
        if write:
            write_json(path, settings)
        return
    saved = {**defaults, **json.loads(path.read_text())}
    changed = sorted(
        key
        for key in set(saved) | set(settings)
        if saved.get(key) != settings.get(key)
    )
    if changed:
        raise ValueError(
            f"{path.parent} holds a run with other settings ({changed}: "
            f"{[saved.get(k) for k in changed]} there, "
            f"{[settings.get(k) for k in changed]} now). Use another "
            "--output-dir, or the same settings to resume."
        )
