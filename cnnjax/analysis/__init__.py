"""Analysis of models: parameter and MAC counts (more in later modules)."""

from cnnjax.analysis.costs import count_macs, count_params, jaxpr_macs

__all__ = ["count_macs", "count_params", "jaxpr_macs"]
