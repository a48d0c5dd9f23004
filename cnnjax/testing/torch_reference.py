"""PyTorch twins of registry models for speed comparisons (`cnnjax.bench --compare torch`).

PyTorch is never a dependency of cnnjax: this module imports it when called, and only the
benchmark uses it (install the `ref` extra). Each twin has the same layers and parameter count
as the registry model (the benchmark checks the counts); weights are torch's own initialization,
which does not change the speed. Models with a torchvision counterpart come from torchvision
(with `num_classes` set), the CIFAR networks are written here.
"""

from __future__ import annotations

from cnnjax.errors import ConfigError, unknown_choice


def _cifar_models():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        """ResNet basic block with the paper's option A shortcut (subsample + zero channels)."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            if self.extra:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
            return F.relu(y + shortcut)

    class CifarResNet(nn.Module):
        def __init__(self, depth=20, num_classes=10):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = nn.Sequential(
                nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            )
            blocks, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for i in range(n):
                    blocks.append(BasicBlock(cin, width, 2 if stage and i == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    class VggCifar(nn.Module):
        """VGG-16 with BN on 32x32 inputs: 13 convs, 5 max pools, one 512 -> classes layer."""

        PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")  # fmt: skip

        def __init__(self, num_classes=10):
            super().__init__()
            layers, cin = [], 3
            for item in self.PLAN:
                if item == "M":
                    layers.append(nn.MaxPool2d(2))
                else:
                    layers += [nn.Conv2d(cin, item, 3, 1, 1), nn.BatchNorm2d(item), nn.ReLU()]
                    cin = item
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(512, num_classes)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(4 * growth)
            self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

        def forward(self, x):
            y = self.conv1(F.relu(self.bn1(x)))
            return torch.cat([x, self.conv2(F.relu(self.bn2(y)))], 1)

    class DenseNetBC(nn.Module):
        """DenseNet-BC for CIFAR: 3x3 stem of 2k, three bottleneck dense blocks, compression 0.5."""

        def __init__(self, depth=100, growth=12, num_classes=10):
            super().__init__()
            n = (depth - 4) // 6
            channels = 2 * growth
            layers = [nn.Conv2d(3, channels, 3, 1, 1, bias=False)]
            for block in range(3):
                for _ in range(n):
                    layers.append(DenseLayer(channels, growth))
                    channels += growth
                if block < 2:
                    out = channels // 2
                    transition = nn.Conv2d(channels, out, 1, bias=False)
                    layers += [nn.BatchNorm2d(channels), nn.ReLU(), transition, nn.AvgPool2d(2)]
                    channels = out
            layers += [nn.BatchNorm2d(channels), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(channels, num_classes)

        def forward(self, x):
            return self.head(self.features(x).mean(dim=(2, 3)))

    return {
        "resnet20": lambda classes: CifarResNet(20, classes),
        "resnet56": lambda classes: CifarResNet(56, classes),
        "vgg16_cifar": VggCifar,
        "densenet_bc_100": lambda classes: DenseNetBC(100, 12, classes),
    }


def _torchvision_models():
    import torchvision

    names = ["mobilenet_v2", "resnet18", "resnet50", "densenet121", "vgg16_bn", "convnext_tiny"]
    return {
        n: (lambda classes, n=n: getattr(torchvision.models, n)(num_classes=classes)) for n in names
    }


def create_torch_model(name: str, num_classes: int):
    """The PyTorch twin of registry model `name` (a `torch.nn.Module`, training mode).

    Raises:
      ConfigError: for a model without a twin, listing those with one.
      ImportError: when torch (or torchvision, for its models) is not installed.
    """
    builders = {**_cifar_models()}
    try:
        builders.update(_torchvision_models())
    except ImportError:
        pass
    if name not in builders:
        raise ConfigError(unknown_choice("model with a PyTorch twin", name, builders))
    return builders[name](num_classes)
