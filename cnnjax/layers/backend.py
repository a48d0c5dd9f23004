"""Global switches of the layer library: which convolution kernels run, whether inference fuses.

Every layer module reads its switches here, and this module imports no other layer module, so
any of them can depend on it without a cycle.

`conv_impl("xla")` makes convolutions with impl "auto" use XLA's kernels inside a `with` block
(`force=True`: those asking for "onednn" too; see `cnnjax.layers.conv_ops` for the
implementations). The analysis tools trace under it, so that they see `conv_general_dilated`
equations; forward-mode differentiation (`jax.jvp`, Hessian-vector products) needs
`conv_impl("xla", force=True)` too, since the oneDNN path and batch norm's hand-written backward
pass (`cnnjax.layers.norm`) are defined for reverse mode only; under it both use JAX's own
differentiation rules (`portable_autodiff`).

`inference_fusion(False)` keeps `cnnjax.layers.fusion.conv_bn_act` from folding batch norm into
the convolution before it.

Both switches are context variables: they apply to code traced inside the block (a jitted
function keeps what it was traced with).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import flax.linen as nn
from flax.linen import module as flax_module

from cnnjax.errors import ConfigError, unknown_choice

CONV_IMPLS = ("auto", "xla", "onednn", "explicit")
# (what "auto" resolves to or None for the backend's choice, whether "onednn" is overridden too)
_OVERRIDE: contextvars.ContextVar[tuple[str | None, bool]] = contextvars.ContextVar(
    "cnnjax_conv_impl", default=(None, False)
)
_FUSION: contextvars.ContextVar[bool] = contextvars.ContextVar("cnnjax_fusion", default=True)


@contextlib.contextmanager
def conv_impl(impl: str, force: bool = False) -> Iterator[None]:
    """Inside the block, convolutions with impl "auto" (with `force`, "onednn" too) use `impl`.

    Applies to code traced inside the block (a jitted function keeps what it was traced with).
    """
    if impl not in CONV_IMPLS:
        raise ConfigError(unknown_choice("conv impl", impl, CONV_IMPLS))
    token = _OVERRIDE.set((impl, force))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def conv_impl_override() -> tuple[str | None, bool]:
    """`(impl, force)` of the innermost `conv_impl` block traced in, else `(None, False)`."""
    return _OVERRIDE.get()


def portable_autodiff() -> bool:
    """Whether code traced now is inside `conv_impl("xla", force=True)`.

    There every layer differentiates with JAX's own rules (no FFI kernels, no hand-written
    VJPs), so that forward mode (`jax.jvp`) and higher derivatives work throughout.
    """
    return _OVERRIDE.get() == ("xla", True)


@contextlib.contextmanager
def inference_fusion(enabled: bool) -> Iterator[None]:
    """Inside the block, `conv_bn_act` folds (True, the default) or never folds (False).

    Applies to code traced inside the block (a jitted function keeps what it was traced with).
    """
    token = _FUSION.set(bool(enabled))
    try:
        yield
    finally:
        _FUSION.reset(token)


def fusion_enabled() -> bool:
    """False inside `inference_fusion(False)`, else True."""
    return _FUSION.get()


def modules_observed() -> bool:
    """Whether a Flax method interceptor or `capture_intermediates` is active now.

    Those expect every module to be called, so fused code paths must stay unfused under them.
    """
    # Flax keeps these in private module state; if it moves them, fusing while observed would
    # hide calls that an interceptor or `capture_intermediates` expects to see.
    interceptors = getattr(flax_module, "_global_interceptor_stack", None)
    context = getattr(flax_module, "_context", None)
    capturing = any(getattr(context, "capture_stack", None) or ())
    return bool(interceptors) or capturing or interceptors is None or context is None


def layer_name(module: nn.Module) -> str:
    """A readable path for error messages, e.g. 'CifarResNet/stage2_block1/conv1'."""
    path = module.scope.path if module.scope is not None else ()
    return "/".join((type(module).__name__, *path)) if path else type(module).__name__
