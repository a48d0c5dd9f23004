"""A synthetic, price-like time series and next-step up/down windows for 1-D CNNs.

There is no market data offline, so `simulate_prices` draws a log-price path whose predictability
is known by construction. Returns are `r_t = sigma_t * (KAPPA * d(s_t) + z_t)`:

  * `s_t`: a hidden Markov regime, up / flat / down with drift sign `d = +1, 0, -1`, kept with
    probability `STAY_PROB` each step (regimes last `1 / (1 - STAY_PROB)` steps on average);
  * `sigma_t`: GARCH(1,1) volatility, `sigma_t^2 = omega + alpha r_{t-1}^2 + beta sigma_{t-1}^2`,
    a function of past returns only (volatility clustering, no direction);
  * `z_t`: Student-t shocks with `T_DOF` degrees of freedom scaled to unit variance (fat tails).

Shocks are symmetric, so the *only* directional signal is the persistence of the regime: an
oracle that knows `s_t` predicts the sign of `r_{t+1}` with about 64% accuracy (0.639 in theory),
and a causal predictor must first infer the regime from noisy past returns (the exact HMM
filter, which knows every parameter, gets 61-63% on the test windows of seeds 0-4).
`baselines` measures these and simpler references.

`load_price_updown` cuts one path chronologically: train windows from the first part, test
windows from the last `TEST_FRACTION`, with a gap of `window + horizon` steps between the last
step any train example touches and the first step any test example touches.
"""

from __future__ import annotations

import numpy as np

from cnnjax.data.array_source import ArraySource
from cnnjax.errors import ConfigError, unknown_choice

__all__ = [
    "CHANNELS",
    "SERIES_STATS",
    "baselines",
    "load_price_updown",
    "simulate_prices",
    "split_window_ends",
    "updown_windows",
]

# Regime 0 = up, 1 = flat, 2 = down: the sign of the drift in units of the current volatility.
REGIME_DRIFT = (1.0, 0.0, -1.0)
# Expected regime length 1 / (1 - 0.97) = 33 steps: long enough to be inferred from a 64-step
# window, short enough that a window usually holds a regime change.
STAY_PROB = 0.97
# Drift of a trending regime, in conditional standard deviations per step. With unit-variance
# t(6) shocks P(z > -0.5) = 0.719, so knowing the regime gives ~0.71 accuracy in the two trending
# regimes (after the 3% chance of a switch) and 0.5 in the flat one: an oracle near 0.64.
KAPPA = 0.5
# GARCH(1,1) with the usual daily-equity shape: alpha + beta = 0.96 (shocks to volatility decay
# with a half-life of ~17 steps); omega sets a long-run volatility near 1% per step.
GARCH_ALPHA = 0.08
GARCH_BETA = 0.88
LONG_RUN_VOL = 0.01
GARCH_OMEGA = LONG_RUN_VOL**2 * (1.0 - GARCH_ALPHA - GARCH_BETA)
# t(6) has a finite fourth moment (kurtosis 6), and E[(beta + alpha (KAPPA d + z)^2)^2] < 1 in
# every regime (0.954 flat, 0.999 trending), so the returns keep a finite fourth moment too.
T_DOF = 6.0
START_PRICE = 100.0

# Features: the return divided by a volatility forecast made before it (EWMA of past squared
# returns, RiskMetrics' lambda 0.94), winsorized at +-CLIP; and the log of the EWMA volatility
# (in percent) after that return. Both at step t use returns up to t only.
CHANNELS = ("scaled_return", "log_volatility")
EWMA_LAMBDA = 0.94
CLIP = 5.0
NUM_STEPS = 32_000  # path length of `load_price_updown`: 26,566 train and 4,991 test windows
WARMUP = 250  # first steps never used: the EWMA forgets its initial value (0.94^250 ~ 2e-7)
TEST_FRACTION = 0.16
SPLITS = ("train", "test")

# Per-channel mean and std of the train features (seed 0, window 64, horizon 1, NUM_STEPS), the
# statistics of the "price_updown" dataset spec that normalizes them (`sources.DATASETS` reads
# them from here); tests/data/test_series.py re-measures them.
SERIES_STATS = dict(mean=(-0.0003, 0.1455), std=(1.0437, 0.3745))


def simulate_prices(num_steps: int, seed: int) -> dict[str, np.ndarray]:
    """Draws one regime-switching GARCH(1,1) path with Student-t shocks (see module docstring).

    Args:
      num_steps: number of returns `T`.
      seed: seed of a NumPy `default_rng`; the path is a deterministic function of it.

    Returns:
      float64 arrays of shape `(T,)`: "returns" `r_t` (log returns), "log_price"
      `log(START_PRICE) + cumsum(r)`, "volatility" `sigma_t` (the conditional std of `r_t` given
      the past, known at `t - 1`), "drift" `KAPPA * d(s_t) * sigma_t`; and int64 "regime" `s_t`
      (0 up, 1 flat, 2 down), the regime that generated `r_t`.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be positive, got {num_steps}")
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(T_DOF, num_steps) * np.sqrt((T_DOF - 2.0) / T_DOF)
    switch = rng.random(num_steps) > STAY_PROB
    hops = rng.integers(1, 3, num_steps)  # to one of the two other regimes, uniformly
    regime = np.empty(num_steps, np.int64)
    regime[0] = rng.integers(3)
    for t in range(1, num_steps):  # cheap: the regime is simulated before the returns
        regime[t] = (regime[t - 1] + hops[t]) % 3 if switch[t] else regime[t - 1]
    drift_sign = np.asarray(REGIME_DRIFT)[regime]
    returns = np.empty(num_steps)
    vol = np.empty(num_steps)
    var = LONG_RUN_VOL**2
    for t, (z, d) in enumerate(zip(shocks.tolist(), drift_sign.tolist())):
        sigma = var**0.5
        r = sigma * (KAPPA * d + z)
        vol[t], returns[t] = sigma, r
        var = GARCH_OMEGA + GARCH_ALPHA * r * r + GARCH_BETA * var
    return {
        "log_price": np.log(START_PRICE) + np.cumsum(returns),
        "returns": returns,
        "regime": regime,
        "volatility": vol,
        "drift": KAPPA * drift_sign * vol,
    }


def window_features(returns: np.ndarray) -> np.ndarray:
    """Per-step features `(T, 2)` float64 of `CHANNELS`; row `t` uses `returns[: t + 1]` only."""
    # scipy loads here, not at module top: every `cnnjax.data` import loads this module (the
    # dataset table reads its statistics), and most runs never touch the series.
    from scipy import signal

    r2 = np.square(returns)
    # v_t = lambda v_{t-1} + (1 - lambda) r_t^2, started from the long-run variance.
    init = signal.lfilter_zi([1.0 - EWMA_LAMBDA], [1.0, -EWMA_LAMBDA]) * LONG_RUN_VOL**2
    ewma, _ = signal.lfilter([1.0 - EWMA_LAMBDA], [1.0, -EWMA_LAMBDA], r2, zi=init)
    before = np.concatenate([[LONG_RUN_VOL**2], ewma[:-1]])  # forecast of r_t's variance
    scaled = np.clip(returns / np.sqrt(before), -CLIP, CLIP)
    log_vol = 0.5 * np.log(ewma) + np.log(100.0)
    return np.stack([scaled, log_vol], axis=-1)


def updown_windows(
    returns: np.ndarray, window: int = 64, horizon: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of past features and their next-`horizon` up/down labels.

    Window `i` ends at step `t = i + window - 1`: its features are the rows `t - window + 1 .. t`
    of `window_features(returns)` (returns up to `t` only) and its label is
    `1 if sum(returns[t + 1 : t + 1 + horizon]) > 0 else 0`.

    Args:
      returns: `(T,)` log returns.
      window: steps per example `L`.
      horizon: steps ahead summed into the label.

    Returns:
      `(features float32 (N, L, 2), labels int32 (N,))` with `N = T - window - horizon + 1`.
    """
    if window < 1 or horizon < 1:
        raise ConfigError(f"window and horizon must be positive, got {window}, {horizon}")
    returns = np.asarray(returns, np.float64)
    n = len(returns) - window - horizon + 1
    if n < 1:
        raise ConfigError(f"{len(returns)} returns hold no window of {window} + {horizon} steps")
    feats = np.lib.stride_tricks.sliding_window_view(window_features(returns), window, axis=0)
    features = np.ascontiguousarray(feats[:n].transpose(0, 2, 1), dtype=np.float32)
    ahead = np.convolve(returns, np.ones(horizon), "valid")  # ahead[j] = sum(returns[j:j+h])
    labels = (ahead[window : window + n] > 0).astype(np.int32)
    return features, labels


def split_window_ends(
    split: str, window: int = 64, horizon: int = 1, num_steps: int = NUM_STEPS
) -> np.ndarray:
    """Last feature step `t` of each window of a split, in chronological order.

    Train windows use steps `WARMUP .. boundary - 1` (features and labels); test windows use
    steps `boundary + window + horizon .. num_steps - 1`, `boundary = num_steps - test_steps`.
    """
    if split not in SPLITS:
        raise ConfigError(unknown_choice("split of price_updown", split, SPLITS))
    test_steps = round(TEST_FRACTION * num_steps)
    boundary = num_steps - test_steps
    first, stop = (WARMUP, boundary) if split == "train" else (boundary + window + horizon, None)
    stop = num_steps if stop is None else stop
    ends = np.arange(first + window - 1, stop - horizon)
    if len(ends) < 1:
        raise ConfigError(f"num_steps={num_steps} leaves no {split} window of {window} steps")
    return ends


def load_price_updown(
    split: str, seed: int = 0, window: int = 64, num_steps: int = NUM_STEPS, horizon: int = 1
) -> ArraySource:
    """The up/down dataset: float32 `(window, 2)` feature windows and int32 labels.

    Both splits come from the same path `simulate_prices(num_steps, seed)`; see
    `split_window_ends` for the chronological cut. Deterministic in all arguments.
    """
    ends = split_window_ends(split, window, horizon, num_steps)
    # Features of the whole path, so the EWMA runs on from the start (causal either way).
    features, labels = updown_windows(simulate_prices(num_steps, seed)["returns"], window, horizon)
    index = ends - (window - 1)
    return ArraySource(features[index], labels[index])


def _hmm_filter_up(returns: np.ndarray, vol: np.ndarray) -> np.ndarray:
    """P(regime up) - P(regime down) at each step given returns up to it: the exact forward
    filter of the generator, which knows every parameter and the GARCH volatility."""
    from scipy import stats  # see window_features

    scale = np.sqrt((T_DOF - 2.0) / T_DOF)
    z = (returns / vol)[:, None] - KAPPA * np.asarray(REGIME_DRIFT)[None, :]
    lik = stats.t.pdf(z / scale, T_DOF).tolist()
    a, b = STAY_PROB - (1.0 - STAY_PROB) / 2, (1.0 - STAY_PROB) / 2  # symmetric transitions
    up, flat, down = 1 / 3, 1 / 3, 1 / 3
    out = np.empty(len(returns))
    for t, (lu, lf, ld) in enumerate(lik):
        up, flat, down = lu * (a * up + b), lf * (a * flat + b), ld * (a * down + b)
        total = up + flat + down
        up, flat, down = up / total, flat / total, down / total
        out[t] = up - down
    return out


def baselines(
    seed: int = 0,
    window: int = 64,
    horizon: int = 1,
    num_steps: int = NUM_STEPS,
    logistic: bool = True,
) -> dict[str, float]:
    """Reference test accuracies of `load_price_updown(.., seed, window, num_steps, horizon)`.

    Every rule is fitted (if at all) on the train split only:
      * "majority": the more frequent train label;
      * "last_sign": up iff the last return of the window was positive;
      * "momentum": up iff the sum of the last `k` returns is positive, `k` in 1, 2, 4, .., window
        chosen on train accuracy (reported as "momentum_k");
      * "logistic": L2 logistic regression (sklearn, C=1) on the standardized, flattened window;
      * "hmm_filter": the exact Bayes filter of the generator (knows all parameters, uses the
        whole past): up iff P(up regime) > P(down regime), the Bayes rule for horizon 1. The best
        any causal model can do, up to the finite window;
      * "oracle": knows the true regime at the window's end; predicts its drift sign (the train
        majority in the flat regime). Not achievable: an upper bound on the signal.

    Args:
      seed, window, horizon, num_steps: as for `load_price_updown`.
      logistic: also fit the logistic regression (a few seconds on two CPU cores).

    Returns:
      accuracies in [0, 1] keyed as above, plus "momentum_k" and the sizes "n_train", "n_test".
    """
    path = simulate_prices(num_steps, seed)
    returns, regime = path["returns"], path["regime"]
    train = split_window_ends("train", window, horizon, num_steps)
    test = split_window_ends("test", window, horizon, num_steps)
    ahead = np.convolve(returns, np.ones(horizon), "valid")
    y_train, y_test = (ahead[train + 1] > 0).astype(int), (ahead[test + 1] > 0).astype(int)
    majority = int(y_train.mean() >= 0.5)
    csum = np.concatenate([[0.0], np.cumsum(returns)])

    def momentum(ends: np.ndarray, k: int) -> np.ndarray:
        return (csum[ends + 1] - csum[ends + 1 - k] > 0).astype(int)

    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= window]
    best_k = max(ks, key=lambda k: (momentum(train, k) == y_train).mean())
    drift_sign = np.asarray(REGIME_DRIFT)[regime]
    oracle = np.where(drift_sign[test] == 0, majority, (drift_sign[test] > 0).astype(int))
    result = {
        "majority": float((y_test == majority).mean()),
        "last_sign": float((momentum(test, 1) == y_test).mean()),
        "momentum": float((momentum(test, best_k) == y_test).mean()),
        "momentum_k": float(best_k),
        "hmm_filter": float(
            ((_hmm_filter_up(returns, path["volatility"])[test] > 0) == y_test).mean()
        ),
        "oracle": float((oracle == y_test).mean()),
        "n_train": float(len(train)),
        "n_test": float(len(test)),
    }
    if logistic:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x_train = load_price_updown("train", seed, window, num_steps, horizon).images
        x_test = load_price_updown("test", seed, window, num_steps, horizon).images
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        clf.fit(x_train.reshape(len(x_train), -1), y_train)
        result["logistic"] = float(clf.score(x_test.reshape(len(x_test), -1), y_test))
    return result
