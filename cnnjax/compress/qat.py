"""Quantization-aware training: the training loop's `quant` section.

With `quant.qat_bits = 8` the loop trains the model through qwix's QAT provider: every conv and
dense layer sees its kernel and its input fake-quantized to int8 (per-channel absmax, rounded in
the forward pass, straight-through gradients), so the float parameters learn to survive the
rounding; `cnnjax.compress.ptq.quantize_model` then turns them into true int8 weights on the same
grid. qwix intercepts `lax.conv_general_dilated`, so a QAT run traces every convolution on the
portable XLA path (`conv_impl("xla")`), never the oneDNN call it cannot see.

BatchNorm is folded into the convolutions before QAT (`quant.fold_batch_norm`, on by default):
the run must start from a trained run (`init_from`), whose running statistics are folded into
the kernels and biases (`cnnjax.compress.ptq.fold_batch_norm`; Jacob et al. 2018 fold them for
integer inference, Krishnamoorthi 2018 freezes them for the end of QAT), and the model trains as
its family with `norm="none"`, so the weights QAT rounds are the ones integer inference
multiplies by. The run's saved config says `model_kwargs.norm = "none"`, which is how every
reader of the folder rebuilds it.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from cnnjax.errors import ConfigError

QAT_BITS = (0, 8)


def has_batch_norm(variables) -> bool:
    return bool(variables.get("batch_stats"))


def prepare(model, variables: dict, quant, init_from: str) -> tuple[Any, dict, dict]:
    """`(model to train, its starting variables, model_kwargs changes)` for a `quant` section.

    Raises:
      ConfigError: bits other than 0 or 8; folding BatchNorm with nothing trained to fold (no
        `init_from`), or in a family without a folding plan.
    """
    bits = quant.qat_bits
    if bits not in QAT_BITS:
        raise ConfigError(f"quant.qat_bits must be 0 (off) or 8, got {bits!r}")
    if not bits:
        return model, variables, {}
    changes = {}
    if quant.fold_batch_norm and has_batch_norm(variables):
        if not init_from:
            raise ConfigError(
                "quant.fold_batch_norm folds trained BatchNorm statistics: set init_from.workdir "
                "to the float run (or quant.fold_batch_norm=False to fake-quantize unfolded)"
            )
        from cnnjax.compress.ptq import fold_batch_norm

        fields, variables = fold_batch_norm(model, variables)
        model = model.clone(**fields)
        changes = {"norm": "none"}
    return quantization_aware(model, bits), variables, changes


def quantization_aware(model, bits: int = 8):
    """`model` with every conv and dense layer fake-quantized to `bits` bits (qwix QAT)."""
    import qwix

    rule = qwix.QtRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8)
    if bits != 8:
        raise ConfigError(f"quantization-aware training is int8 only, got {bits!r} bits")
    return qwix.quantize_model(model, qwix.QtProvider([rule]))
