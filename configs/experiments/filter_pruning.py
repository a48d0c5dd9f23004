"""Filter pruning made real (Li et al. 2017): L1-norm structured pruning, retraining, and the
compact model measured against its dense parent.

  python -m experiments.filter_pruning \
      --config=configs/experiments/filter_pruning.py:cpu --workdir=runs/filter_pruning

Per seed: `dense` trains lenet5_caffe (Caffe's 20-50-500 LeNet) from scratch; each arm
`filters<p>` starts from it (`init_from`), removes the fraction p of the filters of conv1 and
conv2 and of the units of ip1 with the smallest L1 norms at step 0 (`prune.method =
"l1_filters"`, one shot, Li et al.'s "prune once and retrain") and retrains. The driver then
takes the zero filters out (`cnnjax.compress.compact.make_compact`), checks that the compact
model predicts what the pruned one does, writes it as a compressed file and runs
`cnnjax.bench` on it against the dense parent in the same process (`--compare parent`).

Sizes: `smoke` (synthetic data, 8 steps; the test suite runs it), `cpu` (MNIST, SGD as the Deep
Compression study, 4 epochs dense + 3 retraining, arms filters50,filters75, 3 seeds; results in
experiments/results/filter_pruning.md). Published (Li et al. 2017, Table 1): VGG-16 on CIFAR-10
loses 34% of its FLOPs and 64% of its parameters at no loss of accuracy (6.75% -> 6.60% error).

`--config.arms=filters50` one arm; `--config.seeds=0,` one seed.
"""

import ml_collections

from cnnjax.train.config import base_config
from configs.common import variant

SIZES = {
    "smoke": dict(dataset="synthetic", steps=8, seeds=(0,), arms="filters50", bench=(16, 1, 1)),
    "cpu": dict(dataset="mnist", steps=0, seeds=(0, 1, 2), arms="filters50,filters75",
                bench=(128, 5, 3)),
}  # fmt: skip
EPOCHS = {"dense": 4.0, "pruned": 3.0}
LEARNING_RATES = {"dense": 0.02, "pruned": 0.01}
MNIST_TRAIN = 60_000
# The producers whose filters (units) go; ip2 is the classifier.
PRUNED_LAYERS = ("conv1/kernel", "conv2/kernel", "ip1/kernel")


def train_config(size: dict, stage: str) -> ml_collections.ConfigDict:
    """The dense run's or the retraining runs' config (prune fractions are set per arm)."""
    t = base_config()
    t.model = "lenet5_caffe"
    t.dataset = size["dataset"]
    t.batch_size = 128 if size["steps"] == 0 else 32
    t.optimizer.update(
        name="sgd", lr=LEARNING_RATES[stage], momentum=0.9, weight_decay=5e-4, decay_mask="kernels"
    )
    t.schedule.update(
        name="cosine", warmup_steps=200 if stage == "dense" and not size["steps"] else 0
    )
    t.augment.crop_padding = 2
    if size["steps"]:
        t.num_steps = size["steps"]
        t.data.fit = "resize"
    else:
        t.num_steps = round(EPOCHS[stage] * MNIST_TRAIN / t.batch_size)
    t.log_every = 500 if size["steps"] == 0 else 4
    t.checkpoint_every = 2_000 if size["steps"] == 0 else 8
    t.keep_checkpoints = 1
    t.progress = False
    if stage == "pruned":
        t.prune.update(method="l1_filters", schedule="one_shot", begin_step=0)
    return t


def get_config(arg="smoke"):
    arg = variant(arg, SIZES, "smoke")
    size = SIZES[arg]
    c = ml_collections.ConfigDict()
    c.size = arg
    c.arms = size["arms"]
    c.seeds = size["seeds"]
    c.layers = PRUNED_LAYERS
    # cnnjax.bench of each compact model against its parent: batch, windows, steps per window.
    c.bench_batch, c.bench_windows, c.bench_steps = size["bench"]
    c.dense = train_config(size, "dense")
    c.pruned = train_config(size, "pruned")
    return c
