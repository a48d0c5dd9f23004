"""LeNet-5 (modern form: ReLU, max pooling) on MNIST, 28x28 digits padded to 32x32 as in 1998.

  python -m cnnjax.main --config=configs/lenet5_mnist.py --workdir=runs/lenet5_mnist

Needs MNIST in TFDS format under $TFDS_DATA_DIR (offline copy: ../shared/tfds). 15 epochs of Adam
with a cosine schedule and +-2 pixel translations. LeCun et al. 1998 report 0.95% test error
(0.8% with distortions); our measured result is in README ("Results").
`--config=configs/lenet5_mnist.py:classic` trains the 1998 form (tanh, average subsampling).
"""

from configs.common import adam_cosine_config, variant

MODELS = {"modern": "lenet5", "classic": "lenet5_classic"}


def get_config(arg=None):
    c = adam_cosine_config(lr=2e-3, warmup_steps=200)
    c.model = MODELS[variant(arg, MODELS, "modern")]
    c.dataset = "mnist"
    c.batch_size = 128
    c.num_epochs = 15.0
    c.augment.crop_padding = 2
    c.log_every = 200
    c.eval_every = 1000
    c.checkpoint_every = 1000
    return c
