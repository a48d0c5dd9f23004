"""The course's hand calculations, recomputed by the analysis tools and set against the literature.

Every number in the "cnnjax" column comes from tracing a real Flax module: output shapes from
`trace_model`, parameters from the module's variables, MACs and receptive fields from the traced
program, memory from the training step's saved residuals, times from the roofline. Nothing is
typed in except the literature column.

  python -m docs.tools.worked_answers > docs/worked_answers.md

`tests/docs/test_worked_answers.py` regenerates the page and compares it with the checked-in copy,
and checks each answer against its literature figure.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax import compress
from cnnjax.analysis.summary import summarize
from cnnjax.analysis.trace import LayerTable, trace_model
from cnnjax.compress import low_rank
from cnnjax.layers import (
    Conv2d,
    ConvBlock,
    ConvTranspose2d,
    SeparableConv2d,
    SpatiallySeparableConv2d,
    max_pool2d,
)
from cnnjax.models.googlenet import InceptionModule
from docs.tools import worked_answers_text
from experiments import low_rank as experiments_low_rank


@dataclasses.dataclass(frozen=True)
class Answer:
    """One computed quantity next to the figure the literature gives for it.

    Attributes:
      question: what is computed.
      ours: the value cnnjax computes.
      literature: the published value (None where the literature states no number).
      source: where the published value is printed.
      rel_tol: how close `ours` must be to `literature` to agree (0: exactly).
    """

    question: str
    ours: float
    literature: float | None
    source: str
    rel_tol: float = 0.0

    @property
    def agrees(self) -> bool | None:
        if self.literature is None:
            return None
        return abs(self.ours - self.literature) <= self.rel_tol * abs(self.literature)


class Stack(nn.Module):
    """Layers applied in order (each a constructor called with no arguments); for tracing."""

    layers: Sequence[Callable[[], Callable]]

    @nn.compact
    def __call__(self, x, train: bool = False):
        for make in self.layers:
            x = make()(x)
        return x


class Pool(nn.Module):
    """A pooling function as a layer (to trace it like the convs)."""

    fn: Callable

    def __call__(self, x):
        return self.fn(x)


class NaiveInception(nn.Module):
    """Inception without 1x1 reductions: 1x1, 3x3 and 5x5 convs and a 3x3 max pool, concatenated."""

    widths: tuple[int, int, int]

    @nn.compact
    def __call__(self, x, train: bool = False):
        n1, n3, n5 = self.widths
        branches = [Conv2d(n1, 1, name="branch1")(x), Conv2d(n3, 3, name="branch2")(x)]
        branches.append(Conv2d(n5, 5, name="branch3")(x))
        branches.append(max_pool2d(x, window=3, strides=1, padding=1))
        return jnp.concatenate(branches, axis=-1)


class Bottleneck(nn.Module):
    """GoogLeNet's Inception module (1x1 reductions, ReLU, no BN) with `widths` as in Table 1."""

    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x, train: bool = False):
        block = functools.partial(ConvBlock, order="conv-act")
        return InceptionModule(self.widths, block, max_pool2d, name="inception")(x, train)


def trace(layers_or_module, input_shape) -> LayerTable:
    module = layers_or_module
    if not isinstance(module, nn.Module):
        module = Stack(tuple(layers_or_module))
    return trace_model(module, tuple(input_shape))


def _size(layers, size: int, channels: int = 1) -> int:
    return trace(layers, (size, size, channels)).outputs["output"].shape[1]


def output_sizes() -> list[Answer]:
    """Output sizes: floor((n + 2p - d(k - 1) - 1) / s) + 1, and (n - 1)s - 2p + k transposed."""
    conv = functools.partial(functools.partial, Conv2d, 4)
    pool = functools.partial(functools.partial, Pool)
    return [
        Answer(
            "LeNet-5 C1: 5x5 conv, no padding, on 32x32",
            _size([conv(5, padding=0)], 32),
            28,
            "LeCun et al. 1998, Sec. II-B (C1: 28x28 feature maps)",
        ),
        Answer(
            "'same' 3x3 conv, padding 1, on 56x56",
            _size([conv(3, padding=1)], 56),
            56,
            "Simonyan & Zisserman 2015, Sec. 2.1 (padding 1 keeps the resolution)",
        ),
        Answer(
            "ResNet stem: 7x7 conv, stride 2, padding 3, on 224x224",
            _size([conv(7, strides=2, padding=3)], 224, 3),
            112,
            "He et al. 2016, Table 1 (conv1: 112x112)",
        ),
        Answer(
            "then 3x3 max pool, stride 2, padding 1",
            _size([pool(functools.partial(max_pool2d, window=3, strides=2, padding=1))], 112),
            56,
            "He et al. 2016, Table 1 (conv2_x: 56x56)",
        ),
        Answer(
            "AlexNet conv1: 11x11, stride 4, no padding, on 227x227",
            _size([conv(11, strides=4, padding=0)], 227, 3),
            55,
            "Krizhevsky et al. 2012, Fig. 2 (55x55x96; the paper's 224 gives (224-11)/4+1 "
            "= 54.25, hence the 227 every reimplementation uses)",
        ),
        Answer(
            "same on 224x224 (floor of 54.25)",
            _size([conv(11, strides=4, padding=0)], 224, 3),
            None,
            "no published figure: the paper's inconsistency",
        ),
        Answer(
            "GoogLeNet 3x3/2 max pool in ceil mode on 112x112",
            _size([pool(functools.partial(max_pool2d, window=3, strides=2, ceil_mode=True))], 112),
            56,
            "Szegedy et al. 2015, Table 1 (max pool 3x3/2: 56x56); floor mode gives 55",
        ),
        Answer(
            "3x3 conv, dilation 2, padding 2, on 64x64",
            _size([conv(3, dilation=2, padding=2)], 64),
            64,
            "Yu & Koltun 2016, Sec. 2 (dilation keeps the resolution)",
        ),
        Answer(
            "transposed 4x4 conv, stride 2, padding 1, on 7x7",
            _size([functools.partial(ConvTranspose2d, 4, 4, strides=2, padding=1)], 7),
            14,
            "Dumoulin & Visin 2016, Relationship 14: o' = s(i' - 1) + k - 2p",
        ),
    ]


def _row(table: LayerTable, name: str):
    return next(r for r in table.rows if r.name == name)


def conv_parameters() -> list[Answer]:
    """Parameters of a conv layer: (k_h k_w C_in / groups + 1) C_out."""
    alexnet, vgg = trace_model("alexnet_lrn"), trace_model("vgg16")
    depthwise = trace([functools.partial(Conv2d, 32, 3, groups=32)], (8, 8, 32))
    grouped = trace([functools.partial(Conv2d, 256, 5, groups=2)], (27, 27, 96))
    return [
        Answer(
            "AlexNet conv1: 96 of 11x11x3, bias",
            _row(alexnet, "conv1").params,
            34_944,
            "(11*11*3 + 1) * 96; Krizhevsky et al. 2012, Fig. 2 (96 kernels of 11x11x3)",
        ),
        Answer(
            "AlexNet conv2 split over 2 GPUs (groups=2): 256 of 5x5x48",
            grouped.params,
            307_456,
            "(5*5*48 + 1) * 256; Krizhevsky et al. 2012, Sec. 3.5",
        ),
        Answer(
            "VGG-16 conv1_2: 64 of 3x3x64", _row(vgg, "conv1_2").params, 36_928, "(3*3*64 + 1) * 64"
        ),
        Answer(
            "3x3 depthwise conv on 32 channels (groups=32)",
            depthwise.params,
            320,
            "(3*3*1 + 1) * 32; Howard et al. 2017, Sec. 3.1",
        ),
        Answer(
            "VGG-16, all layers",
            vgg.params,
            138_357_544,
            "Simonyan & Zisserman 2015, Table 2 (138M); torchvision's count",
        ),
    ]


def receptive_fields() -> list[Answer]:
    """RF of stacked and dilated 3x3 convs (r_l = r_{l-1} + d_l (k - 1) j_{l-1})."""
    answers = []
    layers = []
    for d, expected in zip((1, 2, 4), (3, 7, 15)):
        layers.append(functools.partial(Conv2d, 1, 3, dilation=d, padding=d))
        answers.append(
            Answer(
                f"3x3 convs with dilations {', '.join(str(2**i) for i in range(len(layers)))}",
                trace(layers, (64, 64, 1)).outputs["output"].rf,
                expected,
                "Yu & Koltun 2016, Fig. 1 (3x3, 7x7, 15x15 receptive fields)",
            )
        )
    plain = [functools.partial(Conv2d, 1, 3)] * 3
    rf = trace(plain, (32, 32, 1)).outputs["output"].rf
    answers.append(
        Answer(
            "three 3x3 convs (VGG)", rf, 7, "Simonyan & Zisserman 2015, Sec. 2.3 (effective 7x7)"
        )
    )
    vgg = trace_model("vgg16")
    answers.append(
        Answer(
            "VGG-16 pool5",
            _row(vgg, "max_pool_4").rf,
            212,
            "Araujo et al. 2019, Distill, Table (VGG-16: 212)",
        )
    )
    return answers


def inception_costs() -> list[Answer]:
    """MACs of an Inception module without and with 1x1 bottlenecks."""
    cs231n_naive = trace(NaiveInception((128, 192, 96)), (28, 28, 256))
    cs231n = trace(Bottleneck((128, 64, 192, 64, 96, 64)), (28, 28, 256))
    naive_3a = trace(NaiveInception((64, 128, 32)), (28, 28, 192))
    module_3a = trace(Bottleneck((64, 96, 128, 16, 32, 32)), (28, 28, 192))
    src = "CS231n 2017, lecture 9 (the course notes' figure: 854M -> 358M ops)"
    return [
        Answer(
            "28x28x256 input, naive 1x1/128, 3x3/192, 5x5/96 + pool: MACs",
            cs231n_naive.macs,
            854e6,
            src,
            5e-3,
        ),
        Answer(
            "same with 1x1/64 reductions (and a 1x1/64 after the pool): MACs",
            cs231n.macs,
            358e6,
            "same slide; its six listed terms sum to 271.4M, so the printed 358M total "
            "is an arithmetic slip, not a different count",
            5e-3,
        ),
        Answer(
            "GoogLeNet inception (3a), 28x28x192 input: MACs",
            module_3a.macs,
            128e6,
            "Szegedy et al. 2015, Table 1 (ops 128M)",
            5e-3,
        ),
        Answer(
            "inception (3a): parameters in K = 1024 (weights only, no biases)",
            (module_3a.params - _biases(module_3a)) / 1024,
            159,
            "Szegedy et al. 2015, Table 1 (params 159K)",
            5e-3,
        ),
        Answer(
            "inception (3a) without the reductions (same 64/128/32 outputs): MACs",
            naive_3a.macs,
            None,
            "not in the paper",
        ),
    ]


def _biases(table: LayerTable) -> int:
    return sum(r.output_shape[-1] for r in table.rows if r.op == "conv")


def factorization_savings() -> list[Answer]:
    """Savings of 5x5 -> two 3x3 and 3x3 -> 1x3 + 3x1 (Szegedy et al. 2016, Sec. 3)."""
    c, shape = 64, (17, 17, 64)
    five = trace([functools.partial(Conv2d, c, 5, use_bias=False)], shape).macs
    two_threes = trace([functools.partial(Conv2d, c, 3, use_bias=False)] * 2, shape).macs
    three = trace([functools.partial(Conv2d, c, 3, use_bias=False)], shape).macs
    asym = trace([functools.partial(SpatiallySeparableConv2d, c, 3, use_bias=False)], shape).macs
    src = "Szegedy et al. 2016 (Inception v3), Sec. 3.1"
    return [
        Answer(
            "two 3x3 convs / one 5x5 conv, same channels: relative cost",
            two_threes / five,
            18 / 25,
            src + " (9+9 vs 25: a 28% saving)",
            1e-9,
        ),
        Answer(
            "1x3 + 3x1 / 3x3: relative cost",
            asym / three,
            6 / 9,
            "Szegedy et al. 2016, Sec. 3.2 (33% cheaper)",
            1e-9,
        ),
    ]


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"
TRAINED_FILE = RESULTS / "deep_compression" / "lenet300_100_shared_seed0.cnnz"


def svd_answers() -> list[Answer]:
    """The course's SVD question on a trained matrix (LeNet-300-100's fc1 from its checked-in
    compressed file) and the low-rank study's record (`experiments/results/low_rank.json`)."""
    _, variables = compress.load(str(TRAINED_FILE))
    kernel = np.asarray(variables["params"]["fc1"]["kernel"], np.float64)  # (784, 300)
    a = kernel.T  # y = A x: A maps the 784 inputs to the 300 units
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    images = a @ vt.T  # column i: A v_i
    stretch = np.linalg.norm(images, axis=0) / s
    cosine = np.sum(images * u, axis=0) / np.linalg.norm(images, axis=0)
    first, second = low_rank.factor_kernel(kernel.astype(np.float32), 32)
    m, n = a.shape
    study = json.loads((RESULTS / "low_rank.json").read_text())
    runs = [r for r in study["runs"] if r["model"] == "lenet300_100"]
    rows = [r for r in study["summary"] if r["model"] == "lenet300_100" and r["layer"] == "fc1"]
    dense_error = float(np.mean([r["dense"]["test_error"] for r in runs]))
    close = min(
        (r for r in rows if r["test_error"] <= dense_error + 0.002), key=lambda r: r["rank"]
    )

    def energy(kind: str) -> float:
        spectra = [r["spectra"]["fc1_channel"][kind] for r in runs]
        return float(np.mean([experiments_low_rank.energy_rank(x, 0.9) for x in spectra]))

    trained = (
        "LeNet-300-100's trained fc1 (300 x 784, `deep_compression/lenet300_100_shared_seed0`)"
    )
    study_src = "experiments/results/low_rank.md (MNIST, 3 seeds, no fine-tuning)"
    return [
        Answer("||A v_i|| / sigma_i, smallest of the 300", float(stretch.min()), 1, trained, 1e-9),
        Answer("||A v_i|| / sigma_i, largest of the 300", float(stretch.max()), 1, trained, 1e-9),
        Answer(
            "cos(A v_i, u_i), smallest: A v_i lies along u_i", float(cosine.min()), 1, trained, 1e-9
        ),
        Answer(
            "rank-32 factors of fc1: parameters (vs m n = 235,200)",
            first.size + second.size,
            32 * (m + n),
            "r (m + n), the course's 'one big matrix as a product of small ones'",
        ),
        Answer(
            "rank holding 90% of sum sigma_i^2, trained fc1 (of 300)",
            energy("trained"),
            None,
            study_src,
        ),
        Answer(
            "rank holding 90% of sum sigma_i^2, fc1 at initialization",
            energy("init"),
            None,
            study_src,
        ),
        Answer(
            "smallest studied rank of fc1 within 0.2 points of the dense error",
            close["rank"],
            None,
            study_src,
        ),
        Answer(
            f"... its test error (%), against the dense model's {100 * dense_error:.2f}%",
            round(100 * close["test_error"], 2),
            None,
            study_src,
        ),
        Answer(
            "... its fc1 parameters (% of the dense fc1)",
            round(100 * close["layer_params"] / close["dense_layer_params"], 1),
            None,
            study_src,
        ),
    ]


def depthwise_ratio() -> list[Answer]:
    """Depthwise separable / standard conv cost = 1/N + 1/k^2 (Howard et al. 2017, Eq. 5)."""
    shape, n, k = (14, 14, 512), 512, 3
    standard = trace([functools.partial(Conv2d, n, k, use_bias=False)], shape).macs
    separable = trace([functools.partial(SeparableConv2d, n, k, use_bias=False)], shape).macs
    v1 = trace_model("mobilenet_v1")
    return [
        Answer(
            "14x14x512 -> 512, 3x3: separable / standard MACs",
            separable / standard,
            1 / n + 1 / k**2,
            "Howard et al. 2017, Eq. 5: 1/N + 1/D_K^2",
            1e-9,
        ),
        Answer(
            "the saving factor for 3x3 kernels",
            standard / separable,
            8.5,
            "Howard et al. 2017, Sec. 3.1 ('8 to 9 times less computation')",
            0.06,
        ),
        Answer(
            "MobileNet v1 (224, alpha 1): mult-adds in millions",
            v1.macs / 1e6,
            569,
            "Howard et al. 2017, Table 8",
            1e-3,
        ),
    ]


def classifier_parameters() -> list[Answer]:
    """Parameters of VGG-16's fully connected classifier vs NiN's global-average-pool head."""
    vgg, nin = trace_model("vgg16"), trace_model("nin_imagenet")
    fc = sum(r.params for r in vgg.rows if r.op == "dense")
    gap = sum(r.params for r in nin.rows if r.op == "global_avg_pool")
    return [
        Answer(
            "VGG-16 fc6: 7x7x512 -> 4096",
            _row(vgg, "fc6").params,
            7 * 7 * 512 * 4096 + 4096,
            "course notes (512*4096*7*7), plus 4096 biases",
        ),
        Answer(
            "VGG-16 fc6 + fc7 + fc8", fc, None, "Simonyan & Zisserman 2015 (no per-layer count)"
        ),
        Answer("share of VGG-16's parameters in its classifier", fc / vgg.params, None, ""),
        Answer("NiN's global average pooling head", gap, 0, "Lin et al. 2014, Sec. 3.2"),
        Answer(
            "NiN (ImageNet) parameters, all layers",
            nin.params,
            None,
            "the authors' Caffe model (about 29 MB of float32)",
        ),
    ]


def nin_costs(batch: int = 128, device: str = "a100", precision: str = "tf32") -> dict:
    """Where NiN's training memory, compute and memory traffic go (the course's NiN analysis)."""
    s = summarize("nin_imagenet", batch=batch, device=device, precision=precision)
    rows = [(r, e) for r, e in zip(s.table.rows, s.roofline.layers) if r.op == "conv"]
    top = max(rows, key=lambda p: p[0].macs)[0]
    return {"summary": s, "convs": rows, "top": top}


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4g}"


def _answer_table(answers: list[Answer]) -> list[str]:
    lines = [
        "| quantity | cnnjax | literature | agrees | source |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for a in answers:
        lit = "" if a.literature is None else _number(a.literature)
        ok = {None: "", True: "yes", False: "**no**"}[a.agrees]
        lines.append(f"| {a.question} | {_number(a.ours)} | {lit} | {ok} | {a.source} |")
    return lines


SVD = "Singular value decomposition of a trained layer"
CLASSIFIERS = "Classifier parameters: VGG's dense layers vs NiN's global average pooling"
SECTIONS = [
    ("Output sizes", output_sizes),
    ("Parameters of a convolution", conv_parameters),
    ("Receptive fields", receptive_fields),
    ("Inception module: naive vs 1x1 bottlenecks", inception_costs),
    ("Factorized convolutions", factorization_savings),
    ("Depthwise separable convolution", depthwise_ratio),
    (CLASSIFIERS, classifier_parameters),
    (SVD, svd_answers),
]


def render() -> str:
    """The whole worked-answers page as Markdown."""
    out = [worked_answers_text.HEADER]
    for title, fn in SECTIONS:
        out += [f"## {title}", "", worked_answers_text.INTROS[title], "", *_answer_table(fn()), ""]
    out += worked_answers_text.nin_section(nin_costs())
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
