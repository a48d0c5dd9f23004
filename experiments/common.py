"""Pieces shared by the experiment drivers: flags, data access and plotting setup."""

from __future__ import annotations

import jax
import numpy as np
from absl import flags

from cnnjax import cli
from cnnjax.analysis.devices import host_description
from cnnjax.data import eval_batches


def take(source, count: int, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` examples of a source as `(uint8 images, int labels)`."""
    images, labels = [], []
    seen = 0
    for batch in eval_batches(source, batch_size):
        real = int(np.asarray(batch["mask"]).sum())
        images.append(np.asarray(batch["image"])[:real])
        labels.append(np.asarray(batch["label"])[:real])
        seen += real
        if seen >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def batched(array: np.ndarray, size: int):
    """Consecutive slices of `size` rows (the last one shorter)."""
    return [array[i : i + size] for i in range(0, len(array), size)]


def file_fields(run, train_config, model_fields=None) -> dict:
    """What `cnnjax.compress.save` stores beside a trained run's arrays so the file rebuilds the
    model and its input pipeline: model fields (default: the config's), class count, input
    shape and preprocessing."""
    return {
        "model_fields": dict(model_fields or train_config.model_kwargs.to_dict()),
        "num_classes": run.model.num_classes,
        "input_shape": tuple(train_config.input_shape) or None,
        "preprocess": {
            "mean": list(run.preprocess.mean),
            "std": list(run.preprocess.std),
            "normalize": run.preprocess.normalize,
            "fit": train_config.data.fit,
        },
    }


def machine() -> str:
    """One line naming the hardware and JAX version, for result pages."""
    device = jax.devices()[0]
    return f"{host_description()}, JAX {jax.__version__} ({device.platform}: {device.device_kind})"


def launch(run, config_help: str) -> None:
    """The command line of an experiment: `--config=FILE[:size]`, `--workdir=DIR`, overrides.

    Flags are defined here, when a driver runs as `__main__`, so that importing drivers (tests,
    notebooks) defines none. `run(config, workdir)` returns the results page, which is printed.
    Errors are one `error:` line (`cnnjax.cli`); an interrupted experiment resumes when rerun.
    """
    config = cli.config_file(config_help)
    workdir = flags.DEFINE_string("workdir", None, "Experiment folder (one subfolder per run).")
    cli.run(
        lambda: print(run(config.value, workdir.value)),
        required=["config", "workdir"],
        on_interrupt=cli.RESUME,
    )
