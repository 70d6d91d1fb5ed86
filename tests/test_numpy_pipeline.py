"""Tests for `keras_sam.experiments.numpy_pipeline`: the NumPy twin of the
`tf.data` pipeline, checked against closed forms and against the `tf.data`
pipeline itself (the same statistics over a seeded epoch), and
`keras-sam reproduce` on JAX with TensorFlow made unimportable."""

import json
import os
import pathlib
import sys
import textwrap

import keras
import numpy as np
import pytest
from no_tensorflow import write_blocker
from scripts import run_ok

from keras_sam.experiments import (
    data_pipeline,
    datasets,
    numpy_pipeline,
    training,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZE, PADDING, CUTOUT = 32, data_pipeline.PADDING, data_pipeline.CUTOUT_SIZE
# Outputs of a pipeline normalizing with mean 0.5 and std 1/255 are the
# pixel values minus 127.5: zero padding gives -127.5, integer pixels
# never give 0, and cutout gives exactly 0.
RAW_MEAN, RAW_STD = np.full(3, 0.5), np.full(3, 1 / 255)
# Many images, so that epoch statistics are within a few percent.
COUNT, BATCH = 4096, 256


def _position_images(count):
    """Every image holds its row + 1 in channel 0, its column + 1 in
    channel 1 and 200 in channel 2, so a crop's offset and flip can be
    read off its pixels."""
    rows, columns = np.meshgrid(
        np.arange(SIZE), np.arange(SIZE), indexing="ij"
    )
    image = np.stack([rows + 1, columns + 1, np.full_like(rows, 200)], -1)
    return np.broadcast_to(image, (count, SIZE, SIZE, 3)).astype(np.uint8)


def _pipeline_arguments(count):
    """The positional arguments of both pipelines' training input: `count`
    position images, their labels, the batch size, mean and std."""
    return _position_images(count), np.arange(count), BATCH, RAW_MEAN, RAW_STD


def _numpy_epoch(augment, seed=0, epoch=0, count=COUNT, shuffle=True):
    """One epoch of the NumPy pipeline on position images: `(x + 127.5,
    labels)`, so that pixels are their values (cutout's exactly 127.5)."""
    batches = numpy_pipeline.TrainBatches(
        *_pipeline_arguments(count),
        augment=augment,
        seed=seed,
        shuffle=shuffle,
    )
    batches.set_epoch(epoch)
    parts = [batches[index] for index in range(len(batches))]
    return (
        np.concatenate([x for x, _ in parts]) + 127.5,
        np.concatenate([y for _, y in parts]),
    )


def _tf_epoch(augment, seed=0, count=COUNT):
    """The same from the `tf.data` pipeline (skipped without TensorFlow)."""
    pytest.importorskip("tensorflow")
    dataset, _ = data_pipeline.train_dataset(
        *_pipeline_arguments(count),
        augment=augment,
        seed=seed,
    )
    parts = list(dataset.as_numpy_iterator())
    return (
        np.concatenate([x for x, _ in parts]) + 127.5,
        np.concatenate([y for _, y in parts]),
    )


def _offsets_and_flips(images):
    """`(dy, dx, flip)` of each crop of a position image, read at the
    centre pixel (inside the image for every offset)."""
    values = np.rint(images).astype(int)
    centre = values[:, 16, 16]
    # Unflipped, output pixel (16, 16) is image pixel (12 + dy, 12 + dx);
    # flipped, it is (12 + dy, 11 + dx) and columns run backwards.
    flip = values[:, 16, 17, 1] < centre[:, 1]
    dy = centre[:, 0] - 1 - (16 - PADDING)
    dx = centre[:, 1] - 1 - (16 - PADDING) + flip
    return dy, dx, flip


def _all_crops():
    """Every crop and flip of the padded position image, in NumPy loops:
    an array `(2 * (2 padding + 1) ** 2, 32, 32, 3)`."""
    padded = np.pad(
        _position_images(1)[0].astype(float),
        ((PADDING, PADDING), (PADDING, PADDING), (0, 0)),
    )
    crops = []
    for dy in range(2 * PADDING + 1):
        for dx in range(2 * PADDING + 1):
            crop = padded[dy : dy + SIZE, dx : dx + SIZE]
            crops += [crop, crop[:, ::-1]]
    return np.stack(crops)


def _clipped_length(size=CUTOUT):
    """Length of `[c - size // 2, c - size // 2 + size)` inside the image
    for each centre `c`."""
    centres = np.arange(SIZE)
    top = centres - size // 2
    return np.minimum(top + size, SIZE) - np.maximum(top, 0)


def test_crops_and_flips_are_those_of_the_closed_form():
    x, y = _numpy_epoch("basic", shuffle=False)
    x = np.rint(x)  # float32 normalization is exact to within 1e-4
    np.testing.assert_array_equal(y, np.arange(COUNT))
    dy, dx, flip = _offsets_and_flips(x)
    crops = _all_crops()
    # Each output is the crop at its decoded offset and flip, exactly.
    index = 2 * (dy * (2 * PADDING + 1) + dx) + flip
    np.testing.assert_array_equal(x, crops[index])
    # The epoch mean: each pixel's mean over the 162 equally likely crops,
    # within 6 standard errors.
    expected, variance = crops.mean(axis=0), crops.var(axis=0)
    tolerance = 6 * np.sqrt(variance / COUNT) + 1e-6
    assert np.all(np.abs(x.mean(axis=0) - expected) <= tolerance)


def test_reflect_padding_crops_windows_of_the_mirrored_image():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 5, 5, 2)).astype("float32")
    crops = numpy_pipeline.crop_and_flip(
        images, np.random.default_rng(3), 2, padding_mode="reflect"
    )
    # The same draws, read off NumPy's reflect padding window by window.
    draws = np.random.default_rng(3)
    dy, dx = draws.integers(0, 5, 6), draws.integers(0, 5, 6)
    flip = draws.random(6) < 0.5
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), "reflect")
    for i, crop in enumerate(crops):
        window = padded[i, dy[i] : dy[i] + 5, dx[i] : dx[i] + 5]
        expected = window[:, ::-1] if flip[i] else window
        np.testing.assert_array_equal(crop, expected)
    with pytest.raises(ValueError, match="padding_mode='wrap'"):
        numpy_pipeline.crop_and_flip(images, rng, padding_mode="wrap")


def _check_offsets_and_flips(dy, dx, flip):
    span = 2 * PADDING + 1
    counts = np.bincount(dy * span + dx, minlength=span * span)
    assert counts.size == span * span and counts.min() > 0  # all 81 seen
    p = 1 / span**2
    bound = 6 * np.sqrt(COUNT * p * (1 - p))
    assert np.abs(counts - COUNT * p).max() <= bound
    assert abs(flip.mean() - 0.5) <= 6 * np.sqrt(0.25 / COUNT)
    return {(a, b) for a, b in zip(dy.tolist(), dx.tolist())}


def test_numpy_and_tf_data_epochs_have_the_same_statistics():
    numpy_x, numpy_y = _numpy_epoch("basic", seed=3)
    tf_x, tf_y = _tf_epoch("basic", seed=3)
    # Same batching: a permutation of the rows, in batches of BATCH.
    for y in (numpy_y, tf_y):
        assert sorted(y.tolist()) == list(range(COUNT))
        assert y.tolist() != list(range(COUNT))
    offsets = [_check_offsets_and_flips(*_offsets_and_flips(x))
               for x in (numpy_x, tf_x)]  # fmt: skip
    assert offsets[0] == offsets[1]
    # Per-pixel epoch means agree within 6 standard errors of their
    # difference (each mean has the variance over the 162 crops).
    variance = _all_crops().var(axis=0)
    difference = np.abs(
        np.rint(numpy_x).mean(axis=0) - np.rint(tf_x).mean(axis=0)
    )
    assert np.all(difference <= 6 * np.sqrt(2 * variance / COUNT) + 1e-6)


def test_cutout_area_matches_the_closed_form_and_tf_data():
    length = _clipped_length()
    area_mean = length.mean() ** 2  # rows and columns are independent
    area_variance = (length**2).mean() ** 2 - area_mean**2
    bound = 6 * np.sqrt(area_variance / COUNT)
    areas = []
    for x, _ in (_numpy_epoch("cutout", seed=5), _tf_epoch("cutout", seed=5)):
        zeroed = np.all(x == 127.5, axis=-1)  # output exactly 0
        area = zeroed.sum(axis=(1, 2))
        assert set(area.tolist()) <= {a * b for a in length for b in length}
        assert abs(area.mean() - area_mean) <= bound
        areas.append(area.mean())
        # The centres, read off the squares, are uniform over the image.
        for axis in (2, 1):  # rows, then columns
            inside = zeroed.any(axis=axis)
            first = inside.argmax(axis=1)
            last = SIZE - 1 - inside[:, ::-1].argmax(axis=1)
            centre = np.where(
                first == 0, last + 1 - CUTOUT // 2, first + CUTOUT // 2
            )
            counts = np.bincount(centre, minlength=SIZE)
            assert counts.size == SIZE
            p = 1 / SIZE
            bound_count = 6 * np.sqrt(COUNT * p * (1 - p))
            assert np.abs(counts - COUNT * p).max() <= bound_count
    assert abs(areas[0] - areas[1]) <= np.sqrt(2) * bound


def test_cutout_keeps_the_crops_of_basic_and_clips_squares():
    basic, _ = _numpy_epoch("basic", seed=2, count=512)
    cut, _ = _numpy_epoch("cutout", seed=2, count=512)
    zeroed = np.all(cut == 127.5, axis=-1)
    # Outside the square, cutout's images are basic's (same draws).
    np.testing.assert_array_equal(
        np.where(zeroed[..., None], 127.5, basic), cut
    )
    # Each zeroed set is one axis-aligned rectangle of sides in `length`.
    rows, columns = zeroed.any(axis=2), zeroed.any(axis=1)
    length = set(_clipped_length().tolist())
    for mask, r, c in zip(zeroed, rows, columns):
        assert np.array_equal(mask, r[:, None] & c[None, :])
        assert r.sum() in length and c.sum() in length
    assert (rows.sum(axis=1) < CUTOUT).any()  # some squares are clipped


def test_batches_are_deterministic_given_seed_and_epoch():
    first, labels = _numpy_epoch("cutout", seed=7, count=600)
    again, labels_again = _numpy_epoch("cutout", seed=7, count=600)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    next_epoch, next_labels = _numpy_epoch("cutout", 7, epoch=1, count=600)
    other_seed, _ = _numpy_epoch("cutout", seed=8, count=600)
    assert not np.array_equal(labels, next_labels)  # reshuffled
    assert sorted(next_labels.tolist()) == list(range(600))
    # Re-augmented: the same row is cropped differently in the new epoch.
    by_row = np.argsort(labels), np.argsort(next_labels)
    assert not np.array_equal(first[by_row[0]], next_epoch[by_row[1]])
    assert not np.array_equal(first, other_seed)
    # A batch made alone equals the same batch made in sequence.
    batches = numpy_pipeline.TrainBatches(
        _position_images(600), np.arange(600), BATCH, RAW_MEAN, RAW_STD,
        augment="cutout", seed=7,
    )  # fmt: skip
    x, y = batches[2]
    np.testing.assert_array_equal(x + 127.5, first[2 * BATCH :])
    np.testing.assert_array_equal(y, labels[2 * BATCH :])
    assert len(y) == 600 - 2 * BATCH  # the last batch is smaller


def test_normalization_and_eval_batches_match_tf_data():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(70, 32, 32, 3), dtype=np.uint8)
    mean, std = np.float32([0.49, 0.48, 0.45]), np.float32([0.25, 0.24, 0.26])
    expected = data_pipeline.normalize(tf.constant(images), mean, std)
    np.testing.assert_allclose(
        numpy_pipeline.normalize(images, mean, std), expected.numpy(),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    splits = datasets.CifarSplits(
        "cifar10", 10, "test arrays", (images[:50], np.arange(50) % 10),
        (images[50:60], np.arange(10)), (images[60:], np.arange(10)),
    )  # fmt: skip
    ours = numpy_pipeline.make_pipelines(splits, batch_size=16, seed=4)
    reference = data_pipeline.make_pipelines(
        splits, batch_size=16, seed=4, pipeline="tf.data"
    )
    assert ours.pipeline == "numpy" and reference.pipeline == "tf.data"
    assert ours.steps_per_epoch == reference.steps_per_epoch == 4
    np.testing.assert_allclose(ours.mean, reference.mean)
    for split in ("validation", "test"):
        x, y = (np.concatenate(part) for part in zip(*getattr(ours, split)))
        tf_x, tf_y = (
            np.concatenate(part)
            for part in zip(*getattr(reference, split).as_numpy_iterator())
        )
        np.testing.assert_allclose(x, tf_x, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y, tf_y)
    # "none": the normalized rows themselves, in the epoch's order.
    train = numpy_pipeline.TrainBatches(
        images[:50], np.arange(50), 16, mean, std, augment="none", seed=1
    )
    x, y = (np.concatenate(part) for part in zip(*train))
    np.testing.assert_allclose(
        x, numpy_pipeline.normalize(images[y], mean, std), rtol=0, atol=0
    )
    assert sorted(y.tolist()) == list(range(50))


def test_normalize_table_gives_the_formula_exactly():
    images = np.random.default_rng(2).integers(0, 256, (9, 4, 4, 3))
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    looked_up = numpy_pipeline.normalize(images.astype(np.uint8), mean, std)
    formula = (
        images.astype(np.float32) / np.float32(255)
        - np.float32(mean)
    ) / np.float32(std)
    assert looked_up.dtype == np.float32
    np.testing.assert_array_equal(looked_up, formula)
    np.testing.assert_array_equal(
        numpy_pipeline.normalize(images.astype(np.float32), mean, std),
        formula,
    )


def test_bad_arguments_are_refused_by_name():
    images, labels = _position_images(8), np.arange(8)
    with pytest.raises(ValueError, match="batch_size"):
        numpy_pipeline.TrainBatches(images, labels, 0, RAW_MEAN, RAW_STD)
    with pytest.raises(ValueError, match="AutoAugment"):
        numpy_pipeline.TrainBatches(
            images, labels, 4, RAW_MEAN, RAW_STD, augment="autoaugment"
        )
    with pytest.raises(ValueError, match="seed"):
        numpy_pipeline.TrainBatches(
            images, labels, 4, RAW_MEAN, RAW_STD, seed=1.5
        )
    batches = numpy_pipeline.TrainBatches(images, labels, 4, RAW_MEAN, RAW_STD)
    with pytest.raises(ValueError, match="epoch"):
        batches.set_epoch(-1)
    with pytest.raises(IndexError):
        batches[2]
    with pytest.raises(ValueError, match="workers=2"):
        numpy_pipeline.TrainBatches(
            images, labels, 4, RAW_MEAN, RAW_STD, augment="randaugment",
            workers=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="pipeline"):
        data_pipeline.choose_pipeline("torchdata")


@pytest.mark.multi_backend
def test_fit_sees_epoch_e_in_epoch_e_and_resumes_there():
    """Through Keras' `fit` on this backend: without a callback the epochs
    are 0, 1, 2; `DataEpoch` makes a fit started at `initial_epoch=2`
    see epoch 2."""
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(ValueError, match="JAX and PyTorch"):
            data_pipeline.choose_pipeline("numpy")
        return
    assert data_pipeline.choose_pipeline() == "numpy"

    class Recorded(numpy_pipeline.TrainBatches):
        seen = []

        def __getitem__(self, index):
            self.seen.append((self.epoch, index))
            return super().__getitem__(index)

    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3))
    batches = Recorded(images, np.arange(40) % 10, 16, RAW_MEAN, RAW_STD)
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(),
         keras.layers.Dense(10)]
    )  # fmt: skip
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(batches, epochs=3, shuffle=False, verbose=0)
    # (The first fit may make one batch to build the model, then starts.)
    trained = Recorded.seen[-9:]
    assert trained == [(e, i) for e in range(3) for i in range(3)]
    assert batches.epoch == 3
    splits = datasets.CifarSplits(
        "cifar10", 10, "test", (images, np.arange(40) % 10),
        (images[:0], np.arange(0)), (images[:8], np.arange(8)),
    )  # fmt: skip
    pipelines = numpy_pipeline.make_pipelines(splits, batch_size=16)
    pipelines.set_epoch(5)
    assert pipelines.train.epoch == 5 and pipelines.validation is None
    Recorded.seen = []
    batches.set_epoch(0)
    model.fit(
        batches, epochs=4, initial_epoch=2, shuffle=False, verbose=0,
        callbacks=[training.DataEpoch(_Holder(batches))],
    )  # fmt: skip
    assert Recorded.seen[-6:] == [(e, i) for e in (2, 3) for i in range(3)]
    # Keras' RandAugment runs on this backend's arrays, then cutout.
    randaugment = numpy_pipeline.TrainBatches(
        images[:4], np.arange(4), 4, RAW_MEAN, RAW_STD, augment="randaugment"
    )
    x, _ = randaugment[0]
    assert x.shape == (4, 32, 32, 3) and np.isfinite(x).all()
    assert np.all(x == 0, axis=-1).sum(axis=(1, 2)).min() >= 64  # 8 x 8


class _Holder:
    """The part of `CifarPipelines` that `DataEpoch` uses."""

    def __init__(self, train):
        self.train = train

    def set_epoch(self, epoch):
        self.train.set_epoch(epoch)


def _without_tensorflow(tmp_path, code, timeout):
    pytest.importorskip("jax")
    blocker = write_blocker(tmp_path / "blocker")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        PYTHONPATH=os.pathsep.join([str(blocker), str(REPO_ROOT)]),
        JAX_PLATFORMS="cpu",
    )
    result = run_ok(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )
    return result.stdout


def test_nothing_imports_tensorflow_on_jax(tmp_path):
    """Importing the library and every module `reproduce`, `sweep` and
    `demo` use succeeds with TensorFlow blocked and leaves it unloaded;
    `datasets.load` then gives NumPy pipelines that `fit` trains on."""
    out = _without_tensorflow(
        tmp_path,
        """
        import sys
        try:
            import tensorflow  # noqa: F401
        except ImportError as error:
            print("blocked:", error)
        import keras_sam
        from keras_sam.experiments import (
            cli, config, data_pipeline, datasets, demo, numpy_pipeline,
            reproduce, sources, sweep, training, tuning,
        )
        from keras_sam.experiments.cli import _arguments
        loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]
        print("loaded:", loaded, keras_sam.__file__)
        print("pipeline:", data_pipeline.choose_pipeline())
        import keras
        data = datasets.load(
            source="sample", train_size=100, test_size=20, batch_size=32,
            augment="cutout",
        )
        model = keras.Sequential([
            keras.Input((32, 32, 3)), keras.layers.Flatten(),
            keras.layers.Dense(10),
        ])
        model.compile("sgd", "sparse_categorical_crossentropy")
        history = model.fit(
            data.train, validation_data=data.validation, epochs=2,
            callbacks=[training.DataEpoch(data)], shuffle=False, verbose=0,
        )
        loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]
        print("trained:", data.pipeline, len(history.history["val_loss"]),
              data.train.epoch, "loaded:", loaded)
        """,
        timeout=120,
    )
    assert "blocked: tensorflow is blocked" in out
    assert "loaded: [] " + str(REPO_ROOT / "keras_sam") in out
    assert "pipeline: numpy" in out
    # Two epochs trained and validated; the data epoch moved past both.
    assert "trained: numpy 2 2 loaded: []" in out


def test_reproduce_runs_on_jax_without_tensorflow(tmp_path):
    """`keras-sam reproduce` (the smallest run: 128 images, 1 seed, rho
    given) end to end on JAX with TensorFlow blocked."""
    output = tmp_path / "run"
    stdout = _without_tensorflow(
        tmp_path,
        f"""
        import sys
        from keras_sam.experiments import cli
        status = cli.main([
            "reproduce", "--quick", "--rho", "0.05", "--seeds", "1",
            "--train-size", "128", "--test-size", "64",
            "--sgd-epoch-multiplier", "1", "--verbose", "0",
            "--output-dir", {str(output)!r},
        ])
        loaded = [m for m in sys.modules if m.split(".")[0] == "tensorflow"]
        print("status:", status, "loaded:", loaded)
        """,
        timeout=300,
    )
    assert "status: 0 loaded: []" in stdout
    info = json.loads((output / "run_info.json").read_text())
    assert info["environment"]["backend"] == "jax"
    assert info["input_pipeline"] == "numpy"
    rows = (output / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # header, SAM and SGD for seed 0
