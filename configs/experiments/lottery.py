"""Lottery tickets (Frankle & Carbin 2019): iterative magnitude pruning with the survivors reset
to their initial values, against the same masks on a fresh random initialization.

  python -m experiments.lottery \
      --config=configs/experiments/lottery.py:cpu --workdir=runs/lottery

Per model and seed: round 0 trains the dense net from its initialization theta_0; round k
prunes the smallest-magnitude weights of round k-1's trained kernels (layer-wise: a fraction
`per_round` of each layer's remaining weights) and trains theta_0 times that mask (arm
`ticket`) and, at the `random_rounds`, a fresh initialization times the same mask (arm
`random`, Frankle & Carbin's random reinitialization control). Pruned weights stay zero through
training (`prune.method = "fixed"`). Each run is evaluated every `eval_every` steps on a
validation split held out of the training set (the early-stop iteration is the one of the
lowest validation loss, as in the paper) and on the test split, which is what is reported.

Sizes: `smoke` (synthetic data, 8 steps, 2 rounds; the test suite runs it), `cpu` (MNIST
LeNet-300-100, Adam 1.2e-3 and batch 60 as the paper, 15,000 iterations a round instead of
50,000, 12 rounds (6.9% of the hidden weights left), the random control at every other round,
3 seeds; results in experiments/results/lottery.md) and `paper` (50,000 iterations, 20
rounds, the control at every round, 5 seeds; for an accelerator).

Published (Frankle & Carbin 2019, Fig. 3 and 4): winning tickets of LeNet-300-100 learn faster
(earlier early-stop iteration) and reach higher test accuracy than the dense net down to about
7% of the weights and match it down to about 3.6%; randomly reinitialized ones learn slower and
lose accuracy steadily as weights are removed.

`--config.seeds=0,` runs one seed; `--config.rounds=4` fewer rounds (the runs done are reused).
"""

import ml_collections

from cnnjax.train.config import base_config
from configs.common import variant

SIZES = {
    "smoke": dict(dataset="synthetic", steps=8, eval_every=4, rounds=2, random_rounds=(2,),
                  seeds=(0,)),
    "cpu": dict(dataset="mnist", steps=15_000, eval_every=250, rounds=12,
                random_rounds=(2, 4, 6, 8, 10, 12), seeds=(0, 1, 2)),
    "paper": dict(dataset="mnist", steps=50_000, eval_every=100, rounds=20,
                  random_rounds=tuple(range(1, 21)), seeds=(0, 1, 2, 3, 4)),
}  # fmt: skip
# Frankle & Carbin's pruning rates of LeNet-300-100: 20% of each hidden layer's remaining
# weights a round, 10% of the output layer's.
PER_ROUND = {"fc1/kernel": 0.2, "fc2/kernel": 0.2, "output/kernel": 0.1}
# MNIST's 60,000 training images: the first 55,000 train, the last 5,000 validate (the paper
# holds out 5,000 for early stopping).
TRAIN_SPLIT, VALIDATION_SPLIT = "train[:55000]", "train[55000:]"


def train_config(size: dict) -> ml_collections.ConfigDict:
    """One round's training config (`init_from` and `prune` are set by the driver)."""
    t = base_config()
    t.model = "lenet300_100"
    t.dataset = size["dataset"]
    t.batch_size = 60
    t.optimizer.update(name="adam", lr=1.2e-3)
    t.num_steps = size["steps"]
    if size["dataset"] == "synthetic":
        t.data.fit = "resize"  # synthetic 32x32 digits to 28x28
        t.batch_size = 32
    else:
        t.data.update(train_split=TRAIN_SPLIT, eval_split=VALIDATION_SPLIT)
    t.data.update(test_split="test")
    t.eval_every = size["eval_every"]
    t.log_every = 1_000 if size["steps"] > 100 else 4
    t.checkpoint_every = 5_000 if size["steps"] > 100 else 8
    t.keep_checkpoints = 1
    t.progress = False
    return t


def get_config(arg="smoke"):
    arg = variant(arg, SIZES, "smoke")
    size = SIZES[arg]
    c = ml_collections.ConfigDict()
    c.size = arg
    c.seeds = size["seeds"]
    c.rounds = size["rounds"]
    c.random_rounds = size["random_rounds"]
    c.per_round = ml_collections.ConfigDict(PER_ROUND)
    # Offset of the random control's initialization seed from the run's seed.
    c.random_init_offset = 1_000
    c.train = train_config(size)
    return c
