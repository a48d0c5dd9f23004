"""Every operator of the layer library as a pure function (like `torch.nn.functional`).

Activations are channels-last (`(N, H, W, C)`, `(N, L, C)` in 1-D) and kernels
`(*window, C_in / groups, C_out)`. The Linen modules in `cnnjax.layers` wrap these functions;
docs/layers.md lists each one with its formula, output shape, parameters and source.
"""

from cnnjax.layers.activations import gelu
from cnnjax.layers.backprop import explicit_conv
from cnnjax.layers.blurpool import binomial_filter, blur_avg_pool2d, blur_pool2d, max_blur_pool2d
from cnnjax.layers.conv_ops import (
    conv,
    conv1d,
    conv2d,
    conv_transpose,
    conv_transpose2d,
)
from cnnjax.layers.dropout import channel_dropout, dropout
from cnnjax.layers.norm import batch_norm, layer_norm, local_response_norm
from cnnjax.layers.padding import pad
from cnnjax.layers.pooling import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    global_avg_pool,
    global_max_pool,
    lp_pool2d,
    max_pool2d,
    min_pool2d,
    spatial_pyramid_pool,
)
from cnnjax.layers.special_pooling import bilinear_pool, stochastic_pool2d

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "batch_norm",
    "bilinear_pool",
    "binomial_filter",
    "blur_avg_pool2d",
    "blur_pool2d",
    "channel_dropout",
    "conv",
    "conv1d",
    "conv2d",
    "conv_transpose",
    "conv_transpose2d",
    "dropout",
    "explicit_conv",
    "gelu",
    "global_avg_pool",
    "global_max_pool",
    "layer_norm",
    "local_response_norm",
    "lp_pool2d",
    "max_blur_pool2d",
    "max_pool2d",
    "min_pool2d",
    "pad",
    "spatial_pyramid_pool",
    "stochastic_pool2d",
]
