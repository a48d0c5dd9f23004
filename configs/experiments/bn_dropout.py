"""BN versus dropout ordering (Li et al. 2019, "Understanding the disharmony between dropout and
batch normalization by variance shift") on CIFAR-10 with ResNet-20.

  python -m experiments.bn_dropout --config=configs/experiments/bn_dropout.py:cpu \
      --workdir=runs/bn_dropout

Sizes: `smoke` (synthetic data, a 4-wide ResNet-20, seconds; the test suite runs it), `cpu`
(CIFAR-10 JPEG q75 copy, ResNet-20, 800 steps of 128 = 2 epochs, 3 seeds, 6 arms: about 1.8
hours on a 2-core CPU; results in experiments/results/bn_dropout.md) and `paper` (He et al.'s
64k-step ResNet-20 recipe per arm, for an accelerator; Li et al. trained other networks --
PreResNet, ResNeXt, WRN, DenseNet -- for 300 epochs).

Arms are names (`--config.arms=none,before_bn_0.5`): "none"; "<position>_<rate>" with position
"after_bn" (conv-bn-relu-drop in each block, feeding the next conv+BN), "before_bn"
(conv-drop-bn-relu) or "head" (dropout only before the classifier); "<position>_<kind>_<rate>"
for kind "gaussian" or "uniform" (Li et al.'s Uout, rate = beta).
"""

import ml_collections

from configs.common import cifar_sgd_config, variant

SIZES = {
    "smoke": dict(dataset="synthetic", width=4, steps=8, batch=16, seeds=(0,), measure=32,
                  arms="before_bn_0.5,head_uniform_0.3"),
    "cpu": dict(dataset="cifar10_jpeg", width=16, steps=800, batch=128, seeds=(0, 1, 2),
                measure=10_000,
                arms="none,head_0.5,after_bn_0.1,after_bn_0.5,before_bn_0.1,before_bn_0.5"),
    "paper": dict(dataset="cifar10_jpeg", width=16, steps=64_000, batch=128, seeds=(0, 1, 2),
                  measure=10_000,
                  arms="none,head_0.5,after_bn_0.1,after_bn_0.3,after_bn_0.5,before_bn_0.1,"
                       "before_bn_0.3,before_bn_0.5,before_bn_uniform_0.1,before_bn_uniform_0.3"),
}  # fmt: skip


def get_config(arg="smoke"):
    arg = variant(arg, SIZES, "smoke")
    size = SIZES[arg]
    c = ml_collections.ConfigDict()
    c.size = arg
    c.arms = size["arms"]
    c.seeds = size["seeds"]
    c.measure_images = size["measure"]  # test images for the variance shift and re-estimation
    c.reestimate_images = min(size["measure"], 5_000)  # training images to re-estimate BN with
    c.reestimate_seed = 0  # of their augmentation
    c.toy_rates = (0.5,) if arg == "smoke" else (0.1, 0.3, 0.5)
    c.toy_steps = 20 if arg == "smoke" else 400

    t = cifar_sgd_config(
        size["steps"], size["batch"], size["dataset"], paper_schedule=arg == "paper"
    )
    t.model = "resnet20"
    t.model_kwargs.width = size["width"]
    t.progress = arg != "smoke"
    c.train = t
    return c
