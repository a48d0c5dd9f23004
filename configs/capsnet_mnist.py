"""CapsNet (Sabour et al. 2017) on MNIST: margin loss + 0.0005 x reconstruction, 3 routing steps.

  python -m cnnjax.main --config=configs/capsnet_mnist.py --workdir=runs/capsnet_mnist

The paper's setup: 28x28 inputs in [0, 1] (no normalization: the decoder reconstructs pixels
with a sigmoid), random shifts of up to 2 pixels with zero padding, Adam. The paper trains far
longer and reports 0.25% test error (99.75%); this config is 3 epochs with a cosine decay, the
length a CPU allows (the primary-capsule conv alone is 190M multiply-adds per image). Not yet
run at this length (about 1.5 hours of training on the 2-core CPU at the smoke run's 33
images/s); the 150-step smoke run of the same network on MNIST reached 94.68%
(experiments/results/smoke_zoo.md).
"""

from configs.common import adam_cosine_config, variant


def get_config(arg=None):
    variant(arg)  # no variants
    c = adam_cosine_config(lr=1e-3)
    c.model = "capsnet"
    c.dataset = "mnist"
    c.data.normalize = False
    c.batch_size = 128
    c.num_epochs = 3.0
    c.augment.crop_padding = 2  # shifts of up to 2 pixels, zero padded (Sec. 5)
    c.log_every = 100
    c.eval_every = 469  # every epoch
    c.checkpoint_every = 469
    return c
