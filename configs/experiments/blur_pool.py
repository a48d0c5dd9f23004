"""Shift invariance with anti-aliased downsampling (Zhang 2019, "Making convolutional networks
shift-invariant again") on CIFAR-10: ResNet-20 and a CIFAR VGG-16, blur filters 1 (baseline), 2,
3 and 5, with and without random-crop augmentation.

  python -m experiments.blur_pool --config=configs/experiments/blur_pool.py:cpu \
      --workdir=runs/blur_pool

Sizes: `smoke` (synthetic data, tiny nets, seconds; the test suite runs it), `cpu` (CIFAR-10 JPEG
q75 copy, 600 steps of 128 per run, VGG-16 at a quarter of its width, 3 seeds, 10 arms: about
2.2 hours on an idle 2-core CPU; results in experiments/results/blur_pool.md) and `paper`
(full-width nets, 64k steps, for an accelerator).

Arms are "<net>-blur<M>[-noaug]": net "resnet20" (Zhang's BasicBlock: stride-1 conv1, ReLU,
BlurPool; blurred shortcut) or "vgg" (each 2x2 max pool -> MaxBlurPool; replicate borders, since
the last pool sees a 2x2 map that cannot be reflected); M the binomial filter size (1 = plain
striding, the baseline); "-noaug" trains without random crops and flips.
"""

import ml_collections

from configs.common import cifar_sgd_config, variant

_CPU_ARMS = (
    "resnet20-blur1,resnet20-blur2,resnet20-blur3,resnet20-blur5,vgg-blur1,vgg-blur2,"
    "vgg-blur3,vgg-blur5,resnet20-blur1-noaug,resnet20-blur3-noaug"
)
SIZES = {
    "smoke": dict(dataset="synthetic", resnet_width=4, vgg_width=0.0625, steps=8, batch=16,
                  seeds=(0,), consistency=32, curve=16, arms="resnet20-blur3,vgg-blur3-noaug"),
    "cpu": dict(dataset="cifar10_jpeg", resnet_width=16, vgg_width=0.25, steps=600, batch=128,
                seeds=(0, 1, 2), consistency=10_000, curve=2_000, arms=_CPU_ARMS),
    "paper": dict(dataset="cifar10_jpeg", resnet_width=16, vgg_width=1.0, steps=64_000,
                  batch=128, seeds=(0, 1, 2), consistency=10_000, curve=10_000,
                  arms=_CPU_ARMS + ",resnet20-blur4,resnet20-blur7,vgg-blur1-noaug,"
                                   "vgg-blur3-noaug"),
}  # fmt: skip


def get_config(arg="smoke"):
    arg = variant(arg, SIZES, "smoke")
    size = SIZES[arg]
    c = ml_collections.ConfigDict()
    c.size = arg
    c.arms = size["arms"]
    c.seeds = size["seeds"]
    c.resnet_width = size["resnet_width"]
    c.vgg_width = size["vgg_width"]
    c.consistency_images = size["consistency"]  # test images for the random-pair consistency
    c.curve_images = size["curve"]  # test images for the diagonal-shift curves
    c.max_shift = 4  # random offsets in [-4, 4] on each axis (the augmentation's range)
    c.curve_max_shift = 8  # diagonal shifts (s, s) for s = 0..8

    lr = 0.05 if arg == "smoke" else 0.1
    t = cifar_sgd_config(size["steps"], size["batch"], size["dataset"], lr, arg == "paper")
    t.model = "resnet20"
    t.progress = arg != "smoke"
    c.train = t
    return c
