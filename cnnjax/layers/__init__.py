"""Layer library: convolution, pooling and normalization as pure functions and Linen modules.

Pure functions are collected in `cnnjax.layers.functional`; modules and factories are here.
"""

from cnnjax.layers.backend import CONV_IMPLS, conv_impl, inference_fusion
from cnnjax.layers.blocks import ORDER_TOKENS, ConvBlock, parse_order
from cnnjax.layers.blurpool import BlurAvgPool, BlurPool, ConvBlurPool, MaxBlurPool
from cnnjax.layers.components import resolve_component, resolve_components
from cnnjax.layers.conv import (
    CONV_KINDS,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    DepthwiseConv2d,
    SeparableConv2d,
    SpatiallySeparableConv2d,
    make_conv,
)
from cnnjax.layers.dropout import (
    DROPOUT_KINDS,
    ChannelDropout,
    Dropout,
    Dropout2d,
    NoiseDropout,
    make_dropout,
)
from cnnjax.layers.fusion import conv_bn_act, fold_batchnorm
from cnnjax.layers.norm import BatchNorm, LayerNorm, LocalResponseNorm, TorchBatchNorm
from cnnjax.layers.padding import PAD_MODES, pad
from cnnjax.layers.pooling import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    GlobalAvgPool,
    GlobalMaxPool,
    LPPool2d,
    MaxPool2d,
    MinPool2d,
    SpatialPyramidPool,
    avg_pool2d,
    global_avg_pool,
    max_pool2d,
    pool_output_size,
)
from cnnjax.layers.shapes import conv_output_size, conv_transpose_output_size, resolve_padding
from cnnjax.layers.special_pooling import (
    AttentionPool2d,
    BilinearPool,
    GlobalAttentionPool,
    StochasticPool2d,
)

__all__ = [
    "CONV_IMPLS",
    "CONV_KINDS",
    "DROPOUT_KINDS",
    "NoiseDropout",
    "make_dropout",
    "resolve_component",
    "resolve_components",
    "conv_impl",
    "conv_bn_act",
    "fold_batchnorm",
    "inference_fusion",
    "ORDER_TOKENS",
    "PAD_MODES",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AttentionPool2d",
    "AvgPool2d",
    "BatchNorm",
    "BilinearPool",
    "BlurAvgPool",
    "BlurPool",
    "ChannelDropout",
    "Conv1d",
    "Conv2d",
    "ConvBlock",
    "ConvBlurPool",
    "ConvTranspose2d",
    "DepthwiseConv2d",
    "Dropout",
    "Dropout2d",
    "GlobalAttentionPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "LPPool2d",
    "LayerNorm",
    "LocalResponseNorm",
    "MaxBlurPool",
    "MaxPool2d",
    "MinPool2d",
    "SeparableConv2d",
    "SpatialPyramidPool",
    "SpatiallySeparableConv2d",
    "StochasticPool2d",
    "TorchBatchNorm",
    "avg_pool2d",
    "conv_output_size",
    "conv_transpose_output_size",
    "global_avg_pool",
    "make_conv",
    "max_pool2d",
    "pad",
    "parse_order",
    "pool_output_size",
    "resolve_padding",
]
