"""grain input pipelines: shuffled, resumable training batches and complete, ordered eval batches.

Training batches are a pure function of `(seed, step)`: the source is shuffled with a new
permutation every epoch (`shuffle(seed).repeat()`), cut into fixed-size batches, and the iterator
starts at `start_step`. Resuming at step k therefore yields exactly the batches an uninterrupted
run would have seen from step k on, with no iterator state to save beyond the step itself.

Batches hold raw `uint8` images (brought to the model's input size) and `int32` labels; scaling,
normalization and augmentation happen on the accelerator inside the jitted step.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from cnnjax.data.array_source import ArraySource
from cnnjax.errors import ConfigError, ShapeError

Batch = dict[str, np.ndarray]
FIT_METHODS = ("pad", "resize")


def fit_images(images: np.ndarray, target_shape: tuple[int, int, int], method: str) -> np.ndarray:
    """Brings `uint8 (N, h, w, c)` images to the model's `(H, W, C)`.

    Args:
      images: source images.
      target_shape: the model's input `(H, W, C)`.
      method: "pad" centres smaller images on a zero canvas (MNIST 28x28 -> LeNet's 32x32, as in
        LeCun et al. 1998); "resize" rescales bilinearly (digits 8x8 -> 32x32).

    Returns:
      `uint8 (N, H, W, C)`; a single channel is repeated when the model expects three.

    Raises:
      ShapeError: images larger than the target with "pad", or channel counts that do not map.
    """
    if tuple(images.shape[1:]) == tuple(target_shape):
        return images  # already the model's shape (this is also how 1-D series pass through)
    if images.ndim != 4 or len(target_shape) != 3:
        raise ShapeError(
            f"inputs of shape {images.shape[1:]} do not fit the model input {tuple(target_shape)}"
        )
    height, width, channels = target_shape
    if method not in FIT_METHODS:
        raise ConfigError(
            f"unknown fit method {method!r} (valid choices: {', '.join(FIT_METHODS)})"
        )
    _, h, w, c = images.shape
    if c != channels and c != 1:
        raise ShapeError(f"images have {c} channels but the model expects {channels}")
    if (h, w) != (height, width):
        if method == "pad":
            if h > height or w > width:
                raise ShapeError(
                    f"cannot pad {h}x{w} images to the model input {height}x{width}; "
                    f"use data.fit='resize'"
                )
            top, left = (height - h) // 2, (width - w) // 2
            pads = ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0))
            images = np.pad(images, pads)
        else:
            from PIL import Image

            images = np.stack(
                [
                    np.asarray(
                        Image.fromarray(img[..., 0] if c == 1 else img).resize(
                            (width, height), Image.BILINEAR
                        )
                    ).reshape(height, width, c)
                    for img in images
                ]
            )
    if c != channels:
        images = np.repeat(images, channels, axis=-1)
    return images


class FittedSource:
    """Wraps a source so every example is brought to the model's input shape on access."""

    def __init__(self, source, target_shape: tuple[int, int, int], method: str):
        self.source, self.target_shape, self.method = source, tuple(target_shape), method

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = self.source[index]
        image = fit_images(example["image"][None], self.target_shape, self.method)[0]
        return {"image": image, "label": np.int32(example["label"])}


def fit_source(source, target_shape, method: str):
    """Fits an in-memory source once, or wraps any other source to fit examples lazily."""
    if isinstance(source, ArraySource):
        return ArraySource(fit_images(source.images, target_shape, method), source.labels)
    return FittedSource(source, target_shape, method)


def _keep_image_label(example) -> dict[str, np.ndarray]:
    return {"image": example["image"], "label": np.int32(example["label"])}


def check_batch_size(source, batch_size: int) -> None:
    """Raises `ConfigError` when one batch would need more examples than `source` holds."""
    if len(source) < batch_size:
        raise ConfigError(f"batch_size {batch_size} exceeds the {len(source)} training examples")


def train_batches(
    source,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_workers: int = 0,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Endless training batches, reshuffled every epoch, starting at batch `start_step`.

    Args:
      source: random-access source of `{"image", "label"}` examples.
      batch_size: examples per batch; the last partial batch of an epoch is not dropped, batches
        simply run on into the next epoch's permutation.
      seed: shuffle seed; the order is a pure function of `(seed, step)`.
      start_step: index of the first batch returned (the step a resumed run continues from).
      num_workers: processes decoding examples in parallel (0 = in this process, with threads).
      prefetch: batches read ahead.

    Yields:
      `{"image": uint8 (B, H, W, C), "label": int32 (B,)}`.
    """
    check_batch_size(source, batch_size)
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat()
        .map(_keep_image_label)
        .batch(batch_size, drop_remainder=True)
    )
    dataset = dataset.slice(slice(start_step, None)).to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, min(4, prefetch)), prefetch_buffer_size=prefetch)
    )
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain workers read absl flags (notebooks, tests)
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(num_workers=num_workers)
        )
    return iter(dataset)


def eval_batches(source, batch_size: int) -> Iterator[Batch]:
    """Every example exactly once, in order, in batches of one fixed size.

    The last batch is padded by repeating its final example; `mask` (float32, 1 for real examples)
    tells the eval step to ignore the padding, so accuracy is exact and the step compiles once.

    Yields:
      `{"image": uint8 (B, H, W, C), "label": int32 (B,), "mask": float32 (B,)}`.
    """
    for start in range(0, len(source), batch_size):
        indices = np.arange(start, min(start + batch_size, len(source)))
        real = len(indices)
        indices = np.pad(indices, (0, batch_size - real), mode="edge")
        if isinstance(source, ArraySource):
            images, labels = source.images[indices], source.labels[indices]
        else:
            examples = [source[int(i)] for i in indices]
            images = np.stack([ex["image"] for ex in examples])
            labels = np.array([ex["label"] for ex in examples], np.int32)
        mask = (np.arange(batch_size) < real).astype(np.float32)
        yield {"image": images, "label": labels, "mask": mask}
