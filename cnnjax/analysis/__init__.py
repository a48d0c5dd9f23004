"""Analysis of models: parameter and MAC counts (more in later modules)."""

from cnnjax.analysis.costs import count_macs, count_params, jaxpr_macs
from cnnjax.analysis.devices import DeviceProfile, get_device, list_devices, measure_device
from cnnjax.analysis.memory import TrainingMemory, saved_residuals, training_memory
from cnnjax.analysis.receptive_field import (
    ReceptiveField,
    receptive_field,
    receptive_fields,
    trace_receptive_fields,
)
from cnnjax.analysis.roofline import estimate_layers, layer_bytes_moved
from cnnjax.analysis.trace import LayerRow, LayerTable, trace_model
from cnnjax.analysis.xla_check import FlopsCheck, analytic_vs_xla

__all__ = [
    "count_macs",
    "count_params",
    "jaxpr_macs",
    "DeviceProfile",
    "FlopsCheck",
    "TrainingMemory",
    "analytic_vs_xla",
    "estimate_layers",
    "get_device",
    "layer_bytes_moved",
    "list_devices",
    "measure_device",
    "saved_residuals",
    "training_memory",
    "LayerRow",
    "LayerTable",
    "ReceptiveField",
    "receptive_field",
    "receptive_fields",
    "trace_model",
    "trace_receptive_fields",
]
