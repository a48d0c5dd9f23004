"""ResNet-20 on CIFAR-10 with the recipe of He et al. 2016, Sec. 4.2.

  python -m cnnjax.main --config=configs/resnet20_cifar10.py --workdir=runs/r20          # paper
  python -m cnnjax.main --config=configs/resnet20_cifar10.py:short --workdir=runs/r20s   # CPU

Paper recipe: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k
iterations, stop at 64k; 4-pixel zero padding + random 32x32 crop + horizontal flip. Published:
8.75% test error (91.25% accuracy), trained on 45k images (the paper held out 5k for validation).
`short` keeps everything but the length: 3,000 steps (7.7 epochs), lr drops at 1,500 and 2,250
(the paper's 50% and 75% points), to fit a 2-core CPU (its wall time: README "Results").

The dataset defaults to `cifar10_jpeg`, the offline CIFAR-10 copy re-encoded as JPEG q75 (report
results on it as "CIFAR-10 (JPEG q75 copy)"). With TFDS's real cifar10 prepared in the data folder,
add `--config.dataset=cifar10`.
"""

from configs.common import cifar_sgd_config, variant

LENGTHS = {"paper": 64_000, "short": 3_000}  # steps; lr / 10 at 50% and 75% of them


def get_config(arg="paper"):
    arg = variant(arg, LENGTHS, "paper")
    # Batch 128, SGD 0.9 at lr 0.1, 4-pixel zero padding + crop + flip; the paper's weight decay.
    c = cifar_sgd_config(LENGTHS[arg], batch_size=128, lr=0.1, paper_schedule=True)
    c.optimizer.update(weight_decay=1e-4, decay_mask="all")
    c.model = "resnet20"
    c.log_every = 100
    c.eval_every = 1000 if arg == "short" else 4000
    c.checkpoint_every = 500 if arg == "short" else 2000
    return c
