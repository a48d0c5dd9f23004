"""Shared fixtures: tiny configs on synthetic data, and the offline TFDS folder when present."""

import atexit
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# One persistent XLA compilation cache for the whole run, set before jax is imported so that the
# xdist workers and every subprocess a test starts inherit it: most tests jit fresh closures of
# programs another test (or process) already compiled, and on 2 CPU cores compiling is most of the
# suite's time. The cache keys an executable by its HLO and compile options, so only an identical
# program is reused. The process that made the folder removes it; set JAX_COMPILATION_CACHE_DIR
# yourself to keep one across runs.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _cache = tempfile.mkdtemp(prefix="cnnjax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# XLA's CPU fusion emitters cost most of a tiny program's compile time (0.16 -> 0.08 s for a
# small conv gradient); the suite compiles ~thousands of tiny programs, so it uses the classic
# emitters, whose numerics the tests' tolerances cover alike. Only when the installed XLA knows
# the flag (an unknown one aborts XLA), and never over XLA_FLAGS that someone set: `XLA_FLAGS=
# pytest` runs the suite with XLA's defaults.
FAST_COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if "XLA_FLAGS" not in os.environ:
    _probe = "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"
    _known = subprocess.run(
        [sys.executable, "-c", _probe],
        env={**os.environ, "XLA_FLAGS": FAST_COMPILE_FLAGS, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
    )
    os.environ["XLA_FLAGS"] = FAST_COMPILE_FLAGS if _known.returncode == 0 else ""

import hypothesis  # noqa: E402
import pytest  # noqa: E402

from cnnjax.train.config import base_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# CI replays the same examples every run (a red CI is then reproducible); local runs explore.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def file_digests(folder) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder`: equal before and after a command
    means the command changed nothing there."""
    root = pathlib.Path(folder)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def find_tfds_dir():
    """`$TFDS_DATA_DIR`, else `../shared/tfds` beside the repository, else None."""
    candidates = [os.environ.get("TFDS_DATA_DIR"), str(ROOT.parent / "shared" / "tfds")]
    return next((c for c in candidates if c and os.path.isdir(os.path.join(c, "mnist"))), None)


@pytest.fixture
def tfds_dir():
    path = find_tfds_dir()
    if path is None:
        pytest.skip("offline TFDS data not found (set TFDS_DATA_DIR or put it in ../shared/tfds)")
    return path


def make_tiny_config(**overrides):
    """LeNet-5 on 256 synthetic examples: a few seconds to compile and train."""
    c = base_config()
    c.model = "lenet5"
    c.dataset = "synthetic"
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_steps = 16
    c.optimizer.lr = 3e-3
    c.log_every = 4
    c.eval_every = 0
    c.checkpoint_every = 8
    c.progress = False
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return c


def make_mlp_config(**overrides):
    """LeNet-300-100 on the tiny config's data (an MLP: compiles in a fraction of a conv net's
    time), the synthetic 32x32 images resized to its 28x28."""
    config = make_tiny_config(model="lenet300_100", **overrides)
    config.data.fit = "resize"
    return config


@pytest.fixture
def tiny_config():
    return make_tiny_config
