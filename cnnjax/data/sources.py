"""Datasets as random-access sources of `{"image": uint8 (H, W, C), "label": int}` examples.

Three kinds:
  * TFDS datasets read with `tfds.data_source` (array_record, random access, no TensorFlow) from
    `config.data_dir` or `$TFDS_DATA_DIR`: mnist, fashion_mnist, cifar10 and the offline
    cifar10_jpeg copy (CIFAR-10 re-encoded as JPEG q75; report results on it as such).
  * `digits`: scikit-learn's 8x8 handwritten digits (1,797 real images shipped inside the wheel),
    the offline default.
  * `synthetic`: deterministic, learnable class prototypes plus noise, for tests.
  * `price_updown`: next-step up/down windows `(64, 2)` of a simulated price-like series
    (`cnnjax.data.series`; there is no market data offline), for 1-D CNNs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from cnnjax.data.array_source import ArraySource
from cnnjax.data.series import SERIES_STATS, load_price_updown
from cnnjax.errors import ConfigError, DataError, unknown_choice


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset without reading it.

    Attributes:
      name: config name.
      kind: "tfds", "digits", "synthetic" or "series".
      image_shape: `(H, W, C)` as stored (`(L, C)` for series).
      num_classes: number of labels.
      mean, std: per-channel statistics of the training images scaled to [0, 1].
      splits: split names accepted (TFDS slicing such as "train[:90%]" also works for TFDS data).
      tfds_name: "name:version" for TFDS datasets.
      fit: how images are brought to a model's input size: "pad" (centre, zeros) or "resize".
      note: caveat to print next to results.
      in_tfds_catalog: whether TFDS itself can build it (with internet); local copies cannot.
    """

    name: str
    kind: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...] = ("train", "test")
    tfds_name: str = ""
    fit: str = "pad"
    note: str = ""
    in_tfds_catalog: bool = True


_CIFAR_STATS = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
# Means and stds computed from each training split (tests/data/test_sources.py re-measures them).
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("digits", "digits", (8, 8, 1), 10, (0.3055,), (0.3759,), fit="resize"),
        DatasetSpec("synthetic", "synthetic", (32, 32, 1), 10, (0.5,), (0.214,)),
        DatasetSpec(
            "mnist", "tfds", (28, 28, 1), 10, (0.1307,), (0.3081,), tfds_name="mnist:3.0.1"
        ),
        DatasetSpec(
            "fashion_mnist",
            "tfds",
            (28, 28, 1),
            10,
            (0.2860,),
            (0.3530,),
            tfds_name="fashion_mnist:3.0.1",
        ),
        DatasetSpec(
            "price_updown",
            "series",
            (64, 2),
            2,
            **SERIES_STATS,
            note="synthetic price-like series (cnnjax.data.series), not market data",
        ),
        DatasetSpec("cifar10", "tfds", (32, 32, 3), 10, tfds_name="cifar10:3.0.2", **_CIFAR_STATS),
        DatasetSpec(
            "cifar10_jpeg",
            "tfds",
            (32, 32, 3),
            10,
            tfds_name="cifar10_jpeg:1.0.0",
            note="CIFAR-10 (JPEG q75 copy): lossy, results may differ from true CIFAR-10",
            in_tfds_catalog=False,
            **_CIFAR_STATS,
        ),
    ]
}


def dataset_spec(name: str) -> DatasetSpec:
    """Looks up a dataset; unknown names raise `ConfigError` listing the valid ones."""
    if name not in DATASETS:
        raise ConfigError(unknown_choice("dataset", name, DATASETS))
    return DATASETS[name]


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, else `$TFDS_DATA_DIR`, else TFDS's default `~/tensorflow_datasets`."""
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    )


def _split_base(split: str) -> str:
    return split.split("[")[0]


def load_source(name: str, split: str, data_dir: str | None = None, seed: int = 0):
    """Opens one split of a dataset as a random-access source.

    Args:
      name: a key of `DATASETS`.
      split: "train" or "test" (TFDS datasets also accept slices such as "train[:90%]").
      data_dir: TFDS data folder; defaults to `$TFDS_DATA_DIR`, then `~/tensorflow_datasets`.
      seed: seed of the synthetic dataset (ignored by real data).

    Raises:
      ConfigError: unknown dataset or split.
      DataError: the dataset is not under `data_dir`, with instructions to obtain it.
    """
    spec = dataset_spec(name)
    if _split_base(split) not in spec.splits:
        raise ConfigError(unknown_choice(f"split of dataset {name!r}", split, spec.splits))
    if spec.kind == "digits":
        return _digits(split)
    if spec.kind == "synthetic":
        return synthetic(split, spec.image_shape, spec.num_classes, seed)
    if spec.kind == "series":
        return load_price_updown(split)  # one fixed path: every training seed sees the same data
    return _tfds_source(spec, split, resolve_data_dir(data_dir))


def _tfds_source(spec: DatasetSpec, split: str, data_dir: str):
    tfds_name, version = spec.tfds_name.split(":")
    folder = os.path.join(data_dir, tfds_name, version)
    if not os.path.isdir(folder):
        message = (
            f"dataset {spec.name!r} (TFDS {spec.tfds_name}) not found in {folder}. Point "
            f"--config.data_dir or $TFDS_DATA_DIR at a folder holding it (offline copies of mnist, "
            f"fashion_mnist and cifar10_jpeg are in ../shared/tfds)"
        )
        if spec.in_tfds_catalog:
            message += (
                f', or build it once with internet: python -c "import tensorflow_datasets as tfds; '
                f"tfds.builder('{tfds_name}', data_dir='{data_dir}').download_and_prepare("
                f"download_config=tfds.download.DownloadConfig(file_format='array_record'))\""
            )
        else:
            message += "; it is a local copy that TFDS cannot download"
        raise DataError(message)
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import

    try:
        return tfds.data_source(spec.tfds_name, data_dir=data_dir, split=split, download=False)
    except Exception as error:  # TFDS raises many types for unreadable folders
        raise DataError(
            f"cannot read {spec.tfds_name} split {split!r} in {data_dir}: {error}"
        ) from None


def _digits(split: str) -> ArraySource:
    """scikit-learn digits, split 80/20 per class with a fixed seed (1,438 train / 359 test)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_mask[members[: int(round(0.2 * len(members)))]] = True
    keep = test_mask if split == "test" else ~test_mask
    return ArraySource(images[keep], labels[keep])


def synthetic(
    split: str,
    image_shape: Sequence[int] = (32, 32, 1),
    num_classes: int = 10,
    seed: int = 0,
    size: int | None = None,
) -> ArraySource:
    """A learnable dataset: each class is a fixed random prototype image plus per-example noise.

    Args:
      split: "train" (512 examples) or "test" (128), drawn with different noise.
      image_shape: `(H, W, C)`.
      num_classes: number of prototypes.
      seed: prototypes and noise are a function of the seed (and the split) only.
      size: number of examples, overriding the split's default.
    """
    size = size or (512 if split == "train" else 128)
    prototypes = np.random.default_rng(seed).uniform(64, 192, (num_classes, *image_shape))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.integers(0, num_classes, size)
    images = prototypes[labels] + rng.normal(0, 40, (size, *image_shape))
    return ArraySource(np.clip(np.round(images), 0, 255).astype(np.uint8), labels)


def read_all(source, desc: str = "reading") -> ArraySource:
    """Decodes every example of a source once into memory (fast random access afterwards).

    Images are read in sorted index order, so the result is deterministic.
    """
    if isinstance(source, ArraySource):
        return source
    from tqdm.auto import tqdm

    first = source[0]
    images = np.empty((len(source), *first["image"].shape), np.uint8)
    labels = np.empty((len(source),), np.int32)
    chunk = 1024
    steps = range(0, len(source), chunk)
    for start in tqdm(steps, desc=desc, leave=False, mininterval=2.0, disable=None):
        indices = list(range(start, min(start + chunk, len(source))))
        if hasattr(source, "__getitems__"):  # TFDS batch read: one call per chunk
            examples = source.__getitems__(indices)
        else:
            examples = [source[i] for i in indices]
        images[start : start + len(indices)] = [ex["image"] for ex in examples]
        labels[start : start + len(indices)] = [ex["label"] for ex in examples]
    return ArraySource(images, labels)
