"""Training: config schema, train state, pure steps, optimizers, checkpoints and the loop."""

from cnnjax.train.config import base_config, validate_config
from cnnjax.train.loop import TrainedRun, train, train_and_evaluate

__all__ = ["TrainedRun", "base_config", "train", "train_and_evaluate", "validate_config"]
