"""The run the reliability tests kill and resume: every kind of state, seconds to train.

  python -m tests.reliability.faulty_main --config=tests/reliability/run_config.py --workdir=W

An 8-wide ResNet-20 (BatchNorm statistics) with random crops and flips (the step's RNG) and
Adam (optimizer state) on 512 synthetic examples: 16 steps an epoch, 24 steps, a checkpoint every
5 (so a resume lands mid-epoch, and one from step 15 replays across the epoch boundary at 16),
metrics every 2, an evaluation (and a best-checkpoint save) every 12. Training accuracy goes
from chance to about 0.5; about 6 s a launch with a warm compilation cache.
"""

from cnnjax.train.config import base_config


def get_config(arg=None):
    del arg  # no variants
    c = base_config()
    c.model = "resnet20"
    c.model_kwargs.width = 8
    c.dataset = "synthetic"
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_steps = 24
    c.optimizer.name = "adam"
    c.optimizer.lr = 0.01
    c.augment.crop_padding = 2
    c.augment.flip = True
    c.log_every = 2
    c.eval_every = 12
    c.checkpoint_every = 5
    c.keep_checkpoints = 2
    c.progress = False
    return c
