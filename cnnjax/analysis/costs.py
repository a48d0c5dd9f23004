"""Parameter and multiply-accumulate (MAC) counts of a model, for analysis code.

The counting itself lives in `cnnjax.models.counting` (the registry's `ModelInfo.params` and
`.macs` need it, and the models rank must not import analysis); this module keeps the analysis
API `count_params`, `count_macs` and `jaxpr_macs` where analysis code and notebooks look for it.
"""

from cnnjax.models.counting import count_macs, count_params, jaxpr_macs

__all__ = ["count_macs", "count_params", "jaxpr_macs"]
