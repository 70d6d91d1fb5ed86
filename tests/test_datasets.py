"""Tests for `keras_sam.experiments.datasets` and the shipped CIFAR-10
sample."""

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_sam.experiments import datasets
from keras_sam.experiments.data import make_cifar10_sample

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIR = pathlib.Path(
    os.environ.get(
        "KERAS_SAM_CIFAR10_DIR", REPO_ROOT.parent / "shared/data/cifar10"
    )
)
SAMPLE_PATH = (
    REPO_ROOT / "keras_sam" / "experiments" / "data" / "cifar10_sample.npz"
)
needs_source = pytest.mark.skipif(
    not (SOURCE_DIR / "train.npz").is_file(),
    reason=f"full CIFAR-10 JPEG copy not found in {SOURCE_DIR}",
)


@pytest.fixture(scope="module")
def sample():
    return datasets.load_cifar10_sample()


def _pillow_decode(jpeg_bytes):
    """Decode independently of keras_sam: Pillow straight on the bytes."""
    return np.array(Image.open(io.BytesIO(bytes(jpeg_bytes))).convert("RGB"))


def _write_jpeg_npz(path, images, labels, prefix="", quality=95):
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])])
    np.savez(
        path,
        **{
            f"{prefix}data": np.concatenate(blobs),
            f"{prefix}offsets": offsets.astype(np.int64),
            f"{prefix}y": np.asarray(labels, dtype=np.uint8),
        },
    )
    return blobs


def _smooth_images(count, size=32, seed=0):
    """Smooth colour gradients, which JPEG keeps within a few levels."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, size)
    images = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 255, 3)
        red = a * grid[:, None] + (255 - a) * grid[None, :] * 0.5
        green = np.full((size, size), b)
        blue = c * grid[None, :] + 0 * grid[:, None]
        image = np.stack([red, green, blue], axis=-1)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def test_sample_shapes_dtypes_and_class_balance(sample):
    (x_train, y_train), (x_test, y_test) = sample
    assert x_train.shape == (5000, 32, 32, 3)
    assert x_test.shape == (1000, 32, 32, 3)
    assert x_train.dtype == np.uint8 and x_test.dtype == np.uint8
    assert y_train.shape == (5000,) and y_test.shape == (1000,)
    assert np.issubdtype(y_train.dtype, np.integer)
    np.testing.assert_array_equal(np.bincount(y_train), [500] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
    # Shuffled: the first 100 training rows already cover every class.
    assert set(y_train[:100].tolist()) == set(range(10))


def test_sample_file_size_and_format():
    size_mb = SAMPLE_PATH.stat().st_size / 1e6
    assert 1.5 < size_mb < 3.0
    with np.load(SAMPLE_PATH) as arrays:
        for split, count in (("train", 5000), ("test", 1000)):
            assert arrays[f"{split}_data"].dtype == np.uint8
            assert arrays[f"{split}_offsets"].dtype == np.int64
            assert arrays[f"{split}_offsets"].shape == (count + 1,)
            assert arrays[f"{split}_y"].dtype == np.uint8
            # Each image is a JPEG file: starts with the SOI marker.
            data, offsets = arrays[f"{split}_data"], arrays[f"{split}_offsets"]
            for i in (0, count - 1):
                assert bytes(data[offsets[i] : offsets[i] + 2]) == b"\xff\xd8"


def test_sample_channel_statistics_match_the_copy_readme(sample):
    (x_train, _), _ = sample
    # ../shared/data/cifar10/README.md: train means 0.4913, 0.4821, 0.4465
    # and standard deviations 0.2452, 0.2428, 0.2606 on the full copy.
    pixels = x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(
        pixels.mean(axis=0), [0.4913, 0.4821, 0.4465], atol=0.01
    )
    np.testing.assert_allclose(
        pixels.std(axis=0), [0.2452, 0.2428, 0.2606], atol=0.01
    )


def _jpeg(arrays, prefix, row):
    offsets = arrays[f"{prefix}offsets"]
    return arrays[f"{prefix}data"][offsets[row] : offsets[row + 1]]


@needs_source
@pytest.mark.parametrize(
    "split, rows", [("train", [0, 1, 2, 999, 4321, 4999]), ("test", [0, 999])]
)
def test_sample_images_are_the_source_images_decoded_by_pillow(
    sample, split, rows
):
    (x_train, y_train), (x_test, y_test) = sample
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    with (
        np.load(SAMPLE_PATH) as shipped,
        np.load(SOURCE_DIR / f"{split}.npz") as source,
    ):
        source_index = shipped[f"{split}_source_index"]
        assert len(set(source_index.tolist())) == len(y)
        for row in rows:
            original = _jpeg(source, "", source_index[row])
            # Same bytes as the full copy, decoded as Pillow decodes them.
            np.testing.assert_array_equal(
                _jpeg(shipped, f"{split}_", row), original
            )
            np.testing.assert_array_equal(x[row], _pillow_decode(original))
            assert y[row] == source["y"][source_index[row]]


@needs_source
def test_sample_selection_is_reproducible_from_the_seed():
    with np.load(SAMPLE_PATH) as arrays:
        shipped = arrays["train_source_index"]
        seed = int(arrays["seed"])
    with np.load(SOURCE_DIR / "train.npz") as source:
        labels = source["y"]
    again = make_cifar10_sample.select_balanced(labels, 500, seed)
    np.testing.assert_array_equal(again, shipped)


def test_make_sample_script_on_a_small_fake_copy(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    images = _smooth_images(30)
    labels = np.repeat(np.arange(3), 10)
    train_blobs = _write_jpeg_npz(source / "train.npz", images, labels)
    _write_jpeg_npz(source / "test.npz", images[:9], labels[::10].repeat(3))
    output = tmp_path / "sample.npz"
    make_cifar10_sample.main(
        [
            "--source",
            str(source),
            "--output",
            str(output),
            "--train-per-class",
            "4",
            "--test-per-class",
            "2",
        ]
    )
    x, y = datasets.load_jpeg_npz(output, split="train")
    np.testing.assert_array_equal(np.bincount(y), [4, 4, 4])
    with np.load(output) as arrays:
        rows = arrays["train_source_index"]
    for position, row in enumerate(rows):
        np.testing.assert_array_equal(
            x[position], _pillow_decode(train_blobs[row])
        )
        assert y[position] == labels[row]
    x_test, y_test = datasets.load_jpeg_npz(output, split="test")
    assert x_test.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(y_test), [2, 2, 2])


def test_load_jpeg_npz_decodes_like_pillow_and_close_to_pixels(tmp_path):
    images = _smooth_images(5)
    path = tmp_path / "copy.npz"
    blobs = _write_jpeg_npz(path, images, [3, 1, 4, 1, 5])
    x, y = datasets.load_jpeg_npz(path)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [3, 1, 4, 1, 5])
    for image, blob, decoded in zip(images, blobs, x):
        np.testing.assert_array_equal(decoded, _pillow_decode(blob))
        # Lossy but close: quality 95 on smooth images.
        error = np.abs(decoded.astype(int) - image.astype(int))
        assert error.mean() < 2.0


def test_load_jpeg_npz_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "train.npz"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.load_jpeg_npz(path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.load_cifar10_sample(path)


def test_load_jpeg_npz_rejects_malformed_files(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, data=np.zeros(4, np.uint8), y=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="offsets"):
        datasets.load_jpeg_npz(path)
    with pytest.raises(ValueError, match="split='train'"):
        datasets.load_jpeg_npz(path, split="train")
    np.savez(
        path,
        data=np.zeros(4, np.uint8),
        offsets=np.array([0, 3, 2], np.int64),
        y=np.zeros(2, np.uint8),
    )
    with pytest.raises(ValueError, match="must increase"):
        datasets.load_jpeg_npz(path)
    mixed = [np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)]
    _write_jpeg_npz(path, mixed, [0, 1])
    with pytest.raises(ValueError, match="different shapes"):
        datasets.load_jpeg_npz(path)


def test_pillow_and_tensorflow_decoders_differ_by_a_few_levels(sample):
    # Why one decoder is used everywhere: tf.io.decode_jpeg gives other
    # pixels (here about 1 level on average, at most 5).
    tf = pytest.importorskip("tensorflow")
    with np.load(SAMPLE_PATH) as arrays:
        data, offsets = arrays["test_data"], arrays["test_offsets"]
    (_, _), (x_test, _) = sample
    differences = []
    for row in range(0, 1000, 50):
        jpeg = bytes(data[offsets[row] : offsets[row + 1]])
        decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
        differences.append(np.abs(decoded.astype(int) - x_test[row]))
    differences = np.stack(differences)
    assert 0.0 < differences.mean() < 1.5
    assert differences.max() <= 8


# The readers of the JPEG npz format and of the sample (`datasets`
# re-exports them) need neither TensorFlow nor Keras.
SOURCES_FILE = REPO_ROOT / "keras_sam" / "experiments" / "sources.py"


def test_sources_module_imports_without_tensorflow_or_keras():
    code = (
        "import importlib.util, sys\n"
        "sys.modules['tensorflow'] = None\n"
        "spec = importlib.util.spec_from_file_location("
        f"'sources', {str(SOURCES_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "(x, y), _ = module.load_cifar10_sample()\n"
        "assert x.shape == (5000, 32, 32, 3)\n"
        "assert 'keras' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_load_jpeg_npz_names_a_file_that_is_not_an_npz(tmp_path):
    path = tmp_path / "train.npz"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match="is not a valid npz") as error:
        datasets.load_jpeg_npz(path)
    assert str(path) in str(error.value)
    assert "allow_pickle" not in str(error.value)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(path)
    with pytest.raises(ValueError, match="is not a valid npz"):
        datasets.load_jpeg_npz(path)


def test_load_jpeg_npz_refuses_float_labels(tmp_path):
    path = tmp_path / "train.npz"
    _write_jpeg_npz(path, _smooth_images(2), [0, 1])
    with np.load(path) as arrays:
        arrays = dict(arrays)
    # 1.7 would silently become class 1.
    np.savez(path, **{**arrays, "y": np.array([0.0, 1.7], np.float32)})
    with pytest.raises(ValueError, match="integer class labels.*float32"):
        datasets.load_jpeg_npz(path)


def _write_copy(folder, images, labels):
    folder.mkdir()
    _write_jpeg_npz(folder / "train.npz", images, labels)
    _write_jpeg_npz(folder / "test.npz", images, labels)
    return folder


def test_load_splits_refuses_images_of_another_shape(tmp_path):
    folder = _write_copy(
        tmp_path / "copy", _smooth_images(4, size=16), range(4)
    )
    with pytest.raises(ValueError, match=r"\(32, 32, 3\).*\(16, 16, 3\)"):
        datasets.load_splits("cifar10", data_dir=folder, source="npz")


def test_minimum_train_size_against_counting():
    # Smallest N with 1 <= round(f * N) < N, by brute force.
    for fraction in (0.1, 0.25, 0.5, 0.01, 0.9):
        expected = next(
            n for n in range(1, 10_000) if 1 <= round(fraction * n) < n
        )
        assert datasets.minimum_train_size(fraction) == expected
    assert datasets.minimum_train_size(0.0) == 1


def test_load_splits_says_the_training_set_is_too_small(tmp_path):
    folder = _write_copy(tmp_path / "copy", _smooth_images(10), range(10))
    # 5 images, 10% held out: round(0.5) = 0 images.
    with pytest.raises(ValueError, match="too small.*train_size >= 6"):
        datasets.load_splits(
            "cifar10", data_dir=folder, source="npz", train_size=5
        )
    splits = datasets.load_splits(
        "cifar10", data_dir=folder, source="npz", train_size=6
    )
    assert (len(splits.y_train), len(splits.y_validation)) == (5, 1)


def test_unusable_data_dir_is_one_line_naming_every_attempt(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as error:
        datasets.load_splits(
            "cifar10", data_dir=empty, source="auto", download=False
        )
    message = str(error.value)
    assert "\n" not in message
    for attempt in ("npz: missing", "folder:", "tfds:"):
        assert attempt in message
    assert str(empty / "train.npz") in message
