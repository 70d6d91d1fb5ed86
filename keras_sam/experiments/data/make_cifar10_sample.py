"""Make the class-balanced CIFAR-10 sample shipped in
`keras_sam/experiments/data/`.

The sample keeps the JPEG bytes of the source images unchanged (no
re-encoding), so decoding a sample image gives exactly the pixels of the
same image in the full copy. Selection is deterministic: for each class,
`per_class` source rows are drawn without replacement with
`numpy.random.default_rng(seed)`, and the selected rows are then written in
one fixed shuffled order (so that `x[:n]` and `validation_split` see every
class). The output has the source format (`data`, `offsets`, `y`) plus
`source_index`, the row of each image in the source file.

Run from the repository root:

```
python -m keras_sam.experiments.data.make_cifar10_sample \
    --source ../shared/data/cifar10
```
"""

import argparse
import hashlib
import pathlib

import numpy as np

DEFAULT_SEED = 20240613
DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_TEST_PER_CLASS = 100
OUTPUT_PATH = pathlib.Path(__file__).resolve().parent / "cifar10_sample.npz"


def select_balanced(labels, per_class, seed):
    """Choose `per_class` rows of every class, deterministically.

    Args:
        labels: 1-D integer array of class labels.
        per_class: number of rows to keep for every class.
        seed: seed of `numpy.random.default_rng`.

    Returns:
        1-D int64 array of row indices into `labels`: `per_class` rows of
        each class, in a seeded shuffled order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"Expected 1-D `labels`, got shape {labels.shape}.")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(
            f"`per_class` must be a positive integer, got {per_class!r}."
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if rows.size < per_class:
            raise ValueError(
                f"Class {label} has {rows.size} rows, fewer than "
                f"per_class={per_class}."
            )
        chosen.append(np.sort(rng.choice(rows, size=per_class, replace=False)))
    chosen = np.concatenate(chosen)
    return chosen[rng.permutation(chosen.size)].astype(np.int64)


def subset_jpeg_npz(source, rows):
    """Take rows of a JPEG npz (`data`, `offsets`, `y`), bytes unchanged.

    Args:
        source: mapping with the arrays `data`, `offsets` and `y`.
        rows: 1-D integer array of the rows to keep, in output order.

    Returns:
        A dict with `data` (uint8), `offsets` (int64), `y` (uint8) and
        `source_index` (int64, equal to `rows`).
    """
    data, offsets, labels = source["data"], source["offsets"], source["y"]
    pieces = [data[offsets[i] : offsets[i + 1]] for i in rows]
    lengths = np.array([piece.size for piece in pieces], dtype=np.int64)
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    return {
        "data": np.concatenate(pieces).astype(np.uint8),
        "offsets": new_offsets,
        "y": labels[rows].astype(np.uint8),
        "source_index": np.asarray(rows, dtype=np.int64),
    }


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_sample(
    source_dir,
    output_path=OUTPUT_PATH,
    train_per_class=DEFAULT_TRAIN_PER_CLASS,
    test_per_class=DEFAULT_TEST_PER_CLASS,
    seed=DEFAULT_SEED,
):
    """Write the sample npz from the full JPEG copy in `source_dir`.

    Args:
        source_dir: folder holding `train.npz` and `test.npz` in the JPEG
            npz format (see `keras_sam.experiments.datasets.load_jpeg_npz`).
        output_path: where to write the sample. Defaults to
            `keras_sam/experiments/data/cifar10_sample.npz`.
        train_per_class: training images kept per class. Defaults to 500.
        test_per_class: test images kept per class. Defaults to 100.
        seed: selection seed. Defaults to `DEFAULT_SEED`.

    Returns:
        The output path.
    """
    source_dir = pathlib.Path(source_dir)
    arrays = {}
    for split, per_class in (
        ("train", train_per_class),
        ("test", test_per_class),
    ):
        path = source_dir / f"{split}.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 source file not found: {path}. Pass the folder "
                "holding train.npz and test.npz with --source."
            )
        with np.load(path) as source:
            # Different seeds per split keep the two selections independent.
            split_seed = seed + (0 if split == "train" else 1)
            rows = select_balanced(source["y"], per_class, split_seed)
            subset = subset_jpeg_npz(source, rows)
        for key, value in subset.items():
            arrays[f"{split}_{key}"] = value
        arrays[f"{split}_source_sha256"] = np.array(_sha256(path))
    arrays["seed"] = np.array(seed, dtype=np.int64)
    output_path = pathlib.Path(output_path)
    np.savez_compressed(output_path, **arrays)
    return output_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source",
        required=True,
        help="folder holding the full copy's train.npz and test.npz",
    )
    parser.add_argument("--output", default=str(OUTPUT_PATH))
    parser.add_argument(
        "--train-per-class", type=int, default=DEFAULT_TRAIN_PER_CLASS
    )
    parser.add_argument(
        "--test-per-class", type=int, default=DEFAULT_TEST_PER_CLASS
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    path = make_sample(
        args.source,
        output_path=args.output,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
