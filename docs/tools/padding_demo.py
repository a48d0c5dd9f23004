"""The course's padding demo figure: one image padded with every mode of `cnnjax.layers.pad`.

  python -m docs.tools.padding_demo [padding_demo.png]

writes the PNG (default `padding_demo.png` in the current folder) that `docs/layers.md`'s padding
table refers to; `tests/docs/test_padding_demo.py` checks that it renders.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np

from cnnjax.layers import pad


def render_padding_demo(path: str, image: np.ndarray | None = None, amount: int = 3) -> str:
    """Saves the course's padding demo: one image padded with each mode, the border marked.

    Args:
      path: PNG file to write.
      image: `(H, W)` grayscale image; defaults to the first scikit-learn digit (8x8).
      amount: pixels of padding on every side.

    Returns:
      `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if image is None:
        from sklearn.datasets import load_digits

        image = load_digits().images[0] / 16.0
    image = np.asarray(image, np.float32)
    modes = [
        ("zeros", 0.0),
        ("constant", 0.5),
        ("reflect", 0.0),
        ("replicate", 0.0),
        ("circular", 0.0),
    ]
    figure, axes = plt.subplots(1, len(modes), figsize=(3 * len(modes), 3.3))
    for axis, (mode, value) in zip(axes, modes):
        padded = pad(jnp.asarray(image)[None, :, :, None], amount, mode, value)[0, :, :, 0]
        axis.imshow(np.asarray(padded), cmap="gray", vmin=0, vmax=1)
        height, width = image.shape
        axis.add_patch(
            Rectangle((amount - 0.5, amount - 0.5), width, height, fill=False, color="red", lw=2)
        )
        axis.set_title(f"{mode}({value})" if mode == "constant" else mode)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"padding by {amount} pixels; red: the original image")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


if __name__ == "__main__":
    print(render_padding_demo(sys.argv[1] if len(sys.argv) > 1 else "padding_demo.png"))
