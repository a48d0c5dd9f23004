"""Knowledge distillation (Hinton et al. 2015) on MNIST: a large MLP teacher, a small MLP student
trained alone and trained on the teacher's soft targets.

  python -m experiments.distillation \
      --config=configs/experiments/distillation.py:cpu --workdir=runs/distillation

One teacher run (LeNet-300-100's family widened to 1200-1200, Hinton et al.'s teacher size,
seed 0), then the student (800-800 hidden units, Hinton et al.'s) per arm and seed: "alone"
(labels only) and "T<t>" (`distill.temperature = t`, `distill.soft_weight = 0.9`, the
T^2-scaled soft term). Adam 1e-3 with cosine decay and batch 128 for all; +-2 pixel shifts for
the teacher only (Hinton et al. jittered the teacher's inputs by up to 2 pixels and also used
dropout, which this MLP has not).

Sizes: `smoke` (synthetic data, 8 steps; the test suite runs it), `cpu` (MNIST: teacher 20
epochs, students 10 epochs, 3 seeds, arms alone,T4,T20; about 35 minutes on a 2-core CPU;
results in experiments/results/distillation.md). Published (Hinton et al. 2015, Sec. 3): teacher
2x1200 67 test errors; student 2x800 146 errors alone, 74 distilled (T = 20).

`--config.arms=alone,T4` picks arms; `--config.seeds=0,` one seed.
"""

import ml_collections

from cnnjax.train.config import base_config
from configs.common import variant

SIZES = {
    "smoke": dict(dataset="synthetic", steps=8, teacher=(64, 64), student=(16, 16), seeds=(0,),
                  arms="alone,T4"),
    "cpu": dict(dataset="mnist", steps=0, teacher=(1200, 1200), student=(800, 800),
                seeds=(0, 1, 2), arms="alone,T4,T20"),
}  # fmt: skip
EPOCHS = {"teacher": 20, "student": 10}


def train_config(size: dict, role: str) -> ml_collections.ConfigDict:
    """The teacher's or the student's training config (`distill` is set per arm)."""
    t = base_config()
    t.model = "lenet300_100"
    t.model_kwargs.hidden = size[role]
    t.dataset = size["dataset"]
    t.batch_size = 128 if size["steps"] == 0 else 32
    t.optimizer.update(name="adam", lr=1e-3)
    t.schedule.update(name="cosine", warmup_steps=0)
    # The teacher sees +-2 pixel shifts, as Hinton et al.'s; the student none, so that the soft
    # targets are its only regularizer (their "no regularization" small net, and distilled one).
    t.augment.crop_padding = 2 if role == "teacher" else 0
    if size["steps"]:
        t.num_steps = size["steps"]
        t.data.fit = "resize"  # synthetic 32x32 digits to 28x28
    else:
        t.num_epochs = float(EPOCHS[role])
    t.log_every = 500 if size["steps"] == 0 else 4
    t.checkpoint_every = 2_000 if size["steps"] == 0 else 8
    t.progress = False
    return t


def get_config(arg="smoke"):
    arg = variant(arg, SIZES, "smoke")
    size = SIZES[arg]
    c = ml_collections.ConfigDict()
    c.size = arg
    c.arms = size["arms"]
    c.seeds = size["seeds"]
    c.soft_weight = 0.9
    c.teacher = train_config(size, "teacher")
    c.student = train_config(size, "student")
    return c
