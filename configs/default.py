"""LeNet-5 on scikit-learn's digits: the offline default (real data, no download).

  python -m cnnjax.main --config=configs/default.py --workdir=runs/default

The 8x8 digits (1,438 train / 359 test, a fixed per-class 80/20 split) are resized to LeNet's
32x32. 80 epochs of Adam with +-2 pixel translations; about half a minute on 2 CPU cores.
Measured result: README "Results".
"""

from configs.common import adam_cosine_config, variant


def get_config(arg=None):
    variant(arg)  # no variants
    c = adam_cosine_config(lr=2e-3)
    c.model = "lenet5"
    c.dataset = "digits"
    c.batch_size = 64
    c.num_epochs = 80.0
    c.augment.crop_padding = 2  # +-2 pixel translations at 32x32 (half a pixel of the 8x8 digit)
    c.log_every = 200
    c.eval_every = 450  # about every 20 epochs
    c.checkpoint_every = 450
    return c
