"""A persistent XLA compilation cache for tests that train the same programs more than once.

`cnnjax.train.train` jits fresh closures (init, train and eval steps) on every call, so two runs
of one config compile identical programs twice: on a 2-core CPU that is most of a tiny run's
time. JAX's persistent cache keys each executable by its HLO and compile options, so a second
compilation of the same program loads the first one's executable instead; a program that
differs in any constant (a learning rate, a shape) still compiles afresh.
"""

from __future__ import annotations

import contextlib

import jax
from jax.experimental.compilation_cache import compilation_cache

_SETTINGS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@contextlib.contextmanager
def persistent_compile_cache(path: str):
    """Caches every compilation under `path` while the context is open.

    If a cache is already on (say, for a whole session), that one is shared and left as it is.
    JAX decides once per process whether its cache is used, so both entering and leaving reset
    that decision; afterwards compilations are neither read from nor written to `path`.
    """
    if jax.config.jax_compilation_cache_dir:
        yield
        return
    saved = {name: getattr(jax.config, name) for name in _SETTINGS}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny runs' too
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
