"""Input data: sources (TFDS, digits, synthetic), grain pipelines and JAX augmentation."""

from cnnjax.data.array_source import ArraySource
from cnnjax.data.pipeline import eval_batches, fit_images, fit_source, train_batches
from cnnjax.data.sources import DATASETS, dataset_spec, load_source, read_all

__all__ = [
    "DATASETS",
    "ArraySource",
    "dataset_spec",
    "eval_batches",
    "fit_images",
    "fit_source",
    "load_source",
    "read_all",
    "train_batches",
]
