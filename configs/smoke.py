"""Smoke training: every architecture of the zoo learns on real data in a few minutes of CPU.

  python -m cnnjax.main --config=configs/smoke.py:resnet50 --workdir=runs/smoke/resnet50
  python experiments/smoke_zoo.py --out=experiments/results/smoke_zoo   # all of them, in turn

The argument is a model name from `SMOKE` (default: lenet5_classic). These runs check that an
architecture trains (loss falls, test accuracy far above chance, no divergence); they are not
recipes for good accuracy. "Small configs for the big ones": ImageNet models train on CIFAR-10
(the JPEG q75 copy) at 32x32, or at the smallest size their downsampling allows (AlexNet and
ZFNet 64x64, the paper-layout AlexNet 67x67, Inception v3 75x75 without its auxiliary head), for
300 steps of 32 images (a fifth of an epoch). Measured results: README "Model zoo" and
experiments/results/smoke_zoo.md.
"""

from configs.common import adam_cosine_config, variant

_CIFAR = dict(dataset="cifar10_jpeg", num_steps=300, batch_size=32, lr=1e-3)
_CIFAR_UP = dict(_CIFAR, fit="resize")  # upsampled to what the ImageNet stem needs
_MNIST = dict(dataset="mnist", num_steps=300, batch_size=64, lr=1e-3)
# Up/down has 50% chance and a ~64% ceiling (an oracle that knows the hidden regime): "learns"
# means beating chance by 5 points, not doubling it. experiments/smoke_zoo.py reads min_accuracy.
_SERIES = dict(dataset="price_updown", num_steps=300, batch_size=128, lr=3e-3, min_accuracy=0.55)

# model -> overrides of the common recipe (Adam, 5% warmup, cosine decay).
SMOKE: dict[str, dict] = {
    "lenet5_classic": dict(_MNIST),
    "lenet5_1998": dict(_MNIST),
    "lenet300_100": dict(_MNIST),
    "lenet5_caffe": dict(_MNIST),
    "highway_mlp": dict(_MNIST),
    # 150 steps: the 9x9 256->256 primary-capsule conv trains at ~4 images/s on a 2-core CPU.
    "capsnet": dict(_MNIST, normalize=False, batch_size=32, num_steps=150),
    "alexnet": dict(_CIFAR_UP, input_shape=(64, 64, 3), lr=2e-4),
    # The paper layout (no padding in conv1) needs 67x67 to keep a 3x3 map for its last pool.
    "alexnet_lrn": dict(_CIFAR_UP, input_shape=(67, 67, 3), lr=2e-4),
    "zfnet": dict(_CIFAR_UP, input_shape=(64, 64, 3), lr=2e-4),
    "vgg11_bn": dict(_CIFAR, input_shape=(32, 32, 3), lr=2e-4),
    "vgg16_cifar": dict(_CIFAR),
    "nin_cifar": dict(_CIFAR),
    "googlenet": dict(_CIFAR, input_shape=(32, 32, 3)),
    "bn_inception": dict(_CIFAR, input_shape=(32, 32, 3)),
    # The auxiliary head needs a 17x17 Mixed_6e grid (299x299 input); at 75x75 it is left out.
    "inception_v3": dict(_CIFAR_UP, input_shape=(75, 75, 3), model_kwargs={"aux_logits": False}),
    "highway_cifar": dict(_CIFAR),
    "resnet18": dict(_CIFAR, input_shape=(32, 32, 3)),
    "resnet50": dict(_CIFAR, input_shape=(32, 32, 3)),
    "resnet20": dict(_CIFAR),
    "plain20": dict(_CIFAR),
    "densenet121": dict(_CIFAR, input_shape=(32, 32, 3)),
    "densenet_bc_100": dict(_CIFAR),
    "mobilenet_v1": dict(_CIFAR, input_shape=(32, 32, 3)),
    "mobilenet_v2": dict(_CIFAR, input_shape=(32, 32, 3)),
    "convnext_tiny": dict(_CIFAR, input_shape=(32, 32, 3)),
    "cnn1d": dict(_SERIES),
    "tcn1d": dict(_SERIES),
}


def get_config(arg=None):
    name = variant(arg, SMOKE, "lenet5_classic")
    recipe = SMOKE[name]
    c = adam_cosine_config(lr=recipe["lr"], warmup_steps=recipe["num_steps"] // 20)
    c.model = name
    c.dataset = recipe["dataset"]
    c.input_shape = recipe.get("input_shape", ())
    c.model_kwargs.update(recipe.get("model_kwargs", {}))
    c.data.fit = recipe.get("fit", "")
    c.data.normalize = recipe.get("normalize", True)
    c.data.cache = False  # read (and resize) only the examples the few hundred steps use
    c.batch_size = recipe["batch_size"]
    c.num_steps = recipe["num_steps"]
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = c.num_steps
    c.keep_checkpoints = 1
    return c
