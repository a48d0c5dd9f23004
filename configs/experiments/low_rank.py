"""Low rank by truncated SVD on MNIST: spectra, and error / parameters / MACs / time vs rank.

  python -m experiments.low_rank \
      --config=configs/experiments/low_rank.py:cpu --workdir=runs/low_rank

Per model and seed, one training run: the `dense` stage of Deep Compression's recipe
(`configs/experiments/deep_compression.py`: SGD + momentum, L2 5e-4, cosine decay, +-2 pixel
shifts; 20 epochs for LeNet-300-100, 15 for lenet5_caffe). Then each layer named in `layers`,
alone, is replaced by its best rank-r factorization (`cnnjax.compress.low_rank`, both schemes for
the convolution) at each listed rank, with no fine-tuning, and measured: test error, the layer's
parameters, the model's MACs and the forward time against the dense model's in the same process.
Singular-value spectra of the trained kernels are recorded beside those at initialization.

Sizes: `smoke` (synthetic data, 8 steps; the test suite runs it) and `cpu` (MNIST, 3 seeds;
about 40 minutes on a 2-core CPU; results in experiments/results/low_rank.md).

`--config.models=lenet300_100` runs one model; `--config.seeds=0,` one seed.
"""

import ml_collections

from configs.common import variant
from configs.experiments import deep_compression

# Per model, `<layer>_<scheme>` -> ranks, the last one the layer's full rank (`max_rank`):
# LeNet-300-100's two hidden layers, lenet5_caffe's conv2 (most of its MACs) both ways and ip1
# (most of its weights).
LAYERS = {
    "lenet300_100": {
        "fc1_channel": (1, 2, 4, 8, 16, 32, 64, 128, 300),
        "fc2_channel": (1, 2, 4, 8, 16, 32, 64, 100),
    },
    "lenet5_caffe": {
        "conv2_channel": (1, 2, 4, 8, 16, 32, 50),
        "conv2_spatial": (1, 2, 4, 8, 16, 32, 64, 100),
        "ip1_channel": (1, 2, 4, 8, 16, 32, 64, 128, 500),
    },
}
SIZES = {"smoke": dict(seeds=(0,)), "cpu": dict(seeds=(0, 1, 2))}


def get_config(arg="smoke"):
    arg = variant(arg, SIZES, "smoke")
    c = ml_collections.ConfigDict()
    c.size = arg
    c.models = ",".join(LAYERS)
    c.seeds = SIZES[arg]["seeds"]
    c.layers = {model: dict(entries) for model, entries in LAYERS.items()}
    c.timing_batch = 1000  # images per timed forward pass
    c.timing_repeats = (
        15 if arg == "cpu" else 2
    )  # median of this many, dense and factored alternated
    c.remeasure = False  # True: measure the finished runs again (nothing retrained)
    c.stages = ml_collections.ConfigDict()
    dc_size = deep_compression.SIZES[arg]
    for model in LAYERS:
        c.stages[f"{model}_dense"] = deep_compression.stage_config(dc_size, model, "dense")
    return c
