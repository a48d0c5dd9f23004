"""A 1-D CNN predicts the next step's direction of a simulated price-like series.

  python -m cnnjax.main --config=configs/price_updown.py --workdir=runs/price_updown
  python -m cnnjax.main --config=configs/price_updown.py:tcn1d --workdir=runs/price_updown_tcn

Data: `price_updown` (cnnjax.data.series): 64-step windows of volatility-scaled returns and log
volatility from one simulated path (hidden up/flat/down drift regimes, GARCH volatility, Student-t
shocks), 26,566 training and 4,991 later test windows. It is synthetic, not market data: the only
signal is regime persistence, so even an oracle that knows the regime reaches only ~64%.
`cnnjax.data.series.baselines()` measures the references the README lists next to our result
(majority ~50%, momentum ~60%, exact HMM filter ~61%). Longer or larger-lr training overfits:
1,000 steps at lr 1e-3 fell to ~58% test accuracy.
"""

from configs.common import adam_cosine_config, variant

MODELS = ("cnn1d", "tcn1d")  # the registry's 1-D models


def get_config(arg=None):
    c = adam_cosine_config(lr=3e-3)
    c.model = variant(arg, MODELS, "cnn1d")
    c.dataset = "price_updown"
    c.batch_size = 128
    c.num_steps = 300
    c.log_every = 50
    c.eval_every = 100
    c.checkpoint_every = 100
    return c
