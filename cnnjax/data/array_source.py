"""`ArraySource`: an in-memory dataset split, the form every non-TFDS loader returns.

Its own module, below `sources` and `series`, so that the series generator can build one without
importing the dataset table that lists it.
"""

from __future__ import annotations

import numpy as np


class ArraySource:
    """In-memory random-access source over `images (N, H, W, C) uint8` and `labels (N,)`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"
