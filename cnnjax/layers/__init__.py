"""Layer library: convolution, pooling and normalization as pure functions and Linen modules."""

from cnnjax.layers.conv import CONV_KINDS, Conv2d, make_conv
from cnnjax.layers.norm import BatchNorm
from cnnjax.layers.pooling import avg_pool2d, global_avg_pool, max_pool2d
from cnnjax.layers.shapes import conv_output_size, resolve_padding

__all__ = [
    "CONV_KINDS",
    "BatchNorm",
    "Conv2d",
    "avg_pool2d",
    "conv_output_size",
    "global_avg_pool",
    "make_conv",
    "max_pool2d",
    "resolve_padding",
]
