"""ImageNet for `keras-sam reproduce` (`keras_sam.experiments.imagenet`):
the folder and tfds sources, the Inception-style crops against their
definition, determinism, and a Table 2 run on a tiny generated tree."""

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_sam.experiments import imagenet  # noqa: E402

CLASSES = [f"n0{i}" for i in range(6)]


def _image(path, height, width, value=None, fmt="JPEG"):
    from PIL import Image

    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if value is None:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), value, np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """6 classes; 4 training and 2 validation images each, of several
    sizes, one of them a PNG named .JPEG (as ImageNet's train split has)."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, count in (("train", 4), ("val", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                _image(folder / f"{name}_{i}.JPEG", 30 + 7 * i, 44 - 3 * i)
    _image(root / "train" / CLASSES[0] / "png_0.JPEG", 40, 40, fmt="PNG")
    return root


def test_folder_files_lists_classes_in_sorted_order(tree):
    paths, labels, classes = imagenet.folder_files(tree, "train")
    assert classes == CLASSES
    assert len(paths) == 25 and labels.tolist() == [0] * 5 + sorted(
        [1, 2, 3, 4, 5] * 4
    )
    assert all(f"/{CLASSES[label]}/" in path
               for path, label in zip(paths, labels))
    with pytest.raises(FileNotFoundError, match="val/ or validation/"):
        imagenet.folder_files(tree / "train", "test")


def test_center_window_closed_form():
    window = imagenet.center_window(tf.constant([100, 200, 3]))
    # side round(0.875 * 100) = 88, centred: (100 - 88 + 1) // 2 = 6.
    assert window.numpy().tolist() == [6, 56, 88, 88]


def test_random_windows_keep_the_area_and_aspect_ranges():
    shape = tf.constant([120, 160, 3])
    center = imagenet.center_window(shape).numpy().tolist()
    areas, ratios, fallbacks = [], [], 0
    for i in range(400):
        top, left, height, width = imagenet.random_window(
            shape, tf.constant([7, i])
        ).numpy().tolist()
        assert 0 <= top and top + height <= 120
        assert 0 <= left and left + width <= 160
        if [top, left, height, width] == center:
            fallbacks += 1
            continue
        areas.append(height * width / (120 * 160))
        ratios.append(width / height)
    # Integer windows round the ranges by up to a pixel.
    assert min(areas) >= 0.08 - 0.01 and max(areas) <= 1.0
    assert min(ratios) >= 0.75 - 0.02 and max(ratios) <= 4 / 3 + 0.02
    assert fallbacks < 40  # most draws succeed within 10 attempts
    assert np.mean(areas) > 0.3  # area uniform in [0.08, 1]: mean ~0.54


def test_eval_image_of_a_flat_image_is_its_normalized_colour(tmp_path):
    _image(tmp_path / "flat.jpg", 50, 70, value=(200, 100, 30))
    data = tf.io.read_file(str(tmp_path / "flat.jpg"))
    image = imagenet.eval_image(data, 24).numpy()
    assert image.shape == (24, 24, 3)
    decoded = imagenet.decode_window(
        data, tf.constant([0, 0, 50, 70])
    ).numpy()[25, 35].astype(np.float64)  # JPEG shifts a level or two
    expected = (decoded / 255 - np.array(imagenet.MEAN_RGB)) / np.array(
        imagenet.STD_RGB
    )
    np.testing.assert_allclose(image[12, 12], expected, atol=1e-4)


def test_train_pipeline_is_deterministic_and_resumes_by_epoch(tree):
    def batches(epoch=None):
        data = imagenet.make_pipelines(tree, batch_size=10, seed=3,
                                       image_size=16)
        if epoch is not None:
            data.set_epoch(epoch)
        return data, [
            (x.numpy(), y.numpy()) for x, y in data.train
        ]

    data, first = batches()
    assert data.steps_per_epoch == 3 and len(first) == 3
    assert first[0][0].shape == (10, 16, 16, 3) and first[2][0].shape[0] == 5
    labels = np.concatenate([y for _, y in first])
    assert sorted(labels.tolist()) == sorted([0] * 5 + [1, 2, 3, 4, 5] * 4)
    second = [(x.numpy(), y.numpy()) for x, y in data.train]
    _, resumed = batches(epoch=1)
    _, again = batches()
    for (x0, y0), (x1, y1) in zip(first, again):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    for (x0, y0), (x1, y1) in zip(second, resumed):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(
        np.concatenate([y for _, y in first]),
        np.concatenate([y for _, y in second]),
    ) or not np.array_equal(first[0][0], second[0][0])
    test = list(data.test)
    assert sum(len(y) for _, y in test) == 12 and data.num_classes == 6


def test_bad_arguments_name_the_argument(tree):
    with pytest.raises(ValueError, match="augment='cutout'"):
        imagenet.make_pipelines(tree, augment="cutout")
    with pytest.raises(ValueError, match="image_size"):
        imagenet.make_pipelines(tree, image_size=4)
    with pytest.raises(ValueError, match="needs `data_dir`"):
        imagenet.make_pipelines(None)


def test_tfds_source_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        data = imagenet.make_pipelines(
            tmp_path, source="tfds", batch_size=4, image_size=16
        )
        assert (data.num_classes, data.train_images) == (1000, 6)
        x, y = next(iter(data.train))
        assert x.shape == (4, 16, 16, 3) and y.dtype == tf.int64
        assert np.isfinite(x.numpy()).all()
        x, _ = next(iter(data.test))
        assert x.shape[1:] == (16, 16, 3)


def test_reproduce_writes_table_2_beside_the_run(tree, tmp_path):
    from keras_sam.experiments import reproduce
    from keras_sam.experiments.config import RunConfig

    config = RunConfig(
        dataset="imagenet2012", data_dir=str(tree), model="small-cnn",
        image_size=16, epochs=1, seeds=1, rho=0.05, batch_size=10,
        learning_rate=0.1, weight_decay=1e-4, label_smoothing=0.1,
        sgd_epoch_multiplier=1, verbose=0,
    )
    result = reproduce.run_reproduction(tmp_path / "run", config)
    table = result["paths"]["table"].read_text()
    assert "| paper, Table 2: ResNet-50 | 22.5 ± 0.1 | 6.28 ± 0.08" in table
    assert "label smoothing 0.1" in table
    summary = json.loads(result["paths"]["summary"].read_text())
    assert summary["paper_row_is_same_setting"] is False
    for optimizer in ("sam", "sgd"):
        entry = summary["summary"][optimizer]
        assert entry["epochs"] == 1 and 0 <= entry["mean_test_error"] <= 100
        # Top-5 of 6 classes: at most 1 class of 6 left out.
        assert 0 <= entry["mean_test_top5_error"] <= entry["mean_test_error"]
    with pytest.raises(ValueError, match="needs a given rho"):
        reproduce.run_reproduction(tmp_path / "other", config.replace(rho=None))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "--dataset", "imagenet2012", "--quick"],
         "argument --quick: the sample shipped with keras-sam is CIFAR-10"),
        (["reproduce", "--dataset", "imagenet2012"],
         "argument --data-dir: imagenet2012 needs one"),
        (["reproduce", "--dataset", "imagenet2012", "--data-dir", ".",
          "--source", "npz"], "argument --source: 'npz'"),
        (["reproduce", "--dataset", "imagenet2012", "--data-dir", ".",
          "--augment", "cutout"], "argument --augment: 'cutout'"),
        (["sweep", "--dataset", "imagenet2012", "--data-dir", "."],
         "imagenet2012 is for keras-sam reproduce"),
        (["reproduce", "--image-size", "64", "--quick"],
         "argument --image-size: only for --dataset imagenet2012"),
    ],
)
def test_cli_imagenet_errors_name_the_option(argv, message, tmp_path,
                                             capsys):
    from keras_sam.experiments import cli

    status = cli.main([*argv, "--output-dir", str(tmp_path / "out")])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_imagenet_defaults_are_the_papers(tree, tmp_path):
    from keras_sam.experiments import cli

    out = tmp_path / "run"
    status = cli.main([
        "reproduce", "--dataset", "imagenet2012", "--data-dir", str(tree),
        "--model", "small-cnn", "--image-size", "16", "--epochs", "1",
        "--seeds", "1", "--batch-size", "12", "--output-dir", str(out),
        "--verbose", "0",
    ])
    assert status == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["learning_rate"] == 1.0 and settings["rho"] == 0.05
    assert settings["weight_decay"] == 1e-4
    assert settings["label_smoothing"] == 0.1
    assert settings["sgd_epoch_multiplier"] == 1


# In a fresh process: TensorFlow's collectives of one MirroredStrategy
# collide with those of strategies other tests made in this one.
_MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_sam.experiments import cli
common = ["reproduce", "--dataset", "imagenet2012", "--data-dir", sys.argv[1],
          "--model", "small-cnn", "--image-size", "16", "--epochs", "1",
          "--seeds", "1", "--batch-size", "12", "--output-dir", sys.argv[2],
          "--verbose", "0", "--distribute", "mirrored"]
print("statuses:", cli.main(common), cli.main(common + ["--train-size", "24"]))
"""


def test_reproduce_under_mirrored_strategy_records_m(tree, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tree), str(out)],
        env=dict(os.environ, KERAS_BACKEND="tensorflow",
                 TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, timeout=300,
    )
    # 25 training images in batches of 12 leave 1 for two replicas: refused
    # before anything is written; 24 images train, m = 12 / 2.
    assert "statuses: 2 0" in result.stdout, result.stderr[-3000:]
    assert "a replica would get none" in result.stderr
    rows = (out / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [row.split(",")[header.index("m")] for row in rows[1:]] == ["6"] * 2


def test_distribution_scope_checks_the_backend():
    from keras_sam.experiments import training

    with pytest.raises(ValueError, match="'data-parallel' needs the jax"):
        with training.distribution_scope("data-parallel"):
            pass
    with pytest.raises(ValueError, match="Unknown distribute='tpu'"):
        with training.distribution_scope("tpu"):
            pass
