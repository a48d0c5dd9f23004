"""Normalization layers with PyTorch's defaults, so models match torchvision numerically."""

import functools

import flax.linen as nn

# PyTorch's BatchNorm2d: running = 0.9 * running + 0.1 * batch (Flax momentum 0.9), eps 1e-5.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
