"""cnnjax: convolutional neural networks as pure-function Flax modules, trained and analysed."""

__version__ = "0.1.0"
