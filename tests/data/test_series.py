"""Synthetic price series: the generator's recursion, stylized facts, windows without look-ahead,
the chronological split, the normalization statistics and the reference accuracies."""

import time

import numpy as np
import pytest

from cnnjax.data import series
from cnnjax.data.series import (
    SERIES_STATS,
    baselines,
    load_price_updown,
    simulate_prices,
    split_window_ends,
    updown_windows,
)
from cnnjax.errors import ConfigError


def autocorr(x, lag=1):
    return float(np.corrcoef(x[:-lag], x[lag:])[0, 1])


@pytest.fixture(scope="module")
def path():
    return simulate_prices(series.NUM_STEPS, 0)


@pytest.fixture(scope="module")
def reference():
    return baselines(seed=0)


def test_simulation_is_deterministic_in_the_seed_with_documented_outputs(path):
    again, other = simulate_prices(series.NUM_STEPS, 0), simulate_prices(series.NUM_STEPS, 1)
    assert set(path) >= {"log_price", "returns", "regime", "volatility"}
    for key, value in path.items():
        assert value.shape == (series.NUM_STEPS,)
        np.testing.assert_array_equal(value, again[key])
    for key in ("log_price", "returns", "volatility"):
        assert path[key].dtype == np.float64
    assert not np.allclose(path["returns"], other["returns"])
    np.testing.assert_allclose(path["log_price"], np.log(100.0) + np.cumsum(path["returns"]))


def test_returns_follow_the_garch_recursion_on_past_returns(path):
    r, vol = path["returns"], path["volatility"]
    expected = (
        series.GARCH_OMEGA + series.GARCH_ALPHA * r[:-1] ** 2 + series.GARCH_BETA * vol[:-1] ** 2
    )
    np.testing.assert_allclose(vol[1:] ** 2, expected, rtol=1e-12)
    sign = np.asarray(series.REGIME_DRIFT)[path["regime"]]
    np.testing.assert_allclose(path["drift"], series.KAPPA * sign * vol)


def test_regimes_persist_for_tens_of_steps_and_are_balanced(path):
    regime = path["regime"]
    runs = np.diff(np.flatnonzero(np.diff(regime) != 0))
    assert 25 < runs.mean() < 45  # 1 / (1 - STAY_PROB) = 33
    np.testing.assert_allclose(np.bincount(regime, minlength=3) / len(regime), 1 / 3, atol=0.05)


def test_volatility_clusters_and_shocks_have_fat_tails(path):
    r = path["returns"]
    shock = r - path["drift"]
    assert autocorr(np.abs(r)) > autocorr(r) + 0.03
    assert autocorr(np.abs(shock)) > 0.1  # GARCH: big moves follow big moves ...
    assert abs(autocorr(shock)) < 0.03  # ... in either direction
    z = shock / path["volatility"]
    # Unit-variance t(6): P(|z| > 4) ~ 0.27%, ~86 of 32k; a Gaussian would give ~2.
    assert (np.abs(z) > 4).sum() > 30


def test_windows_have_the_documented_shapes_labels_and_features():
    r = np.random.default_rng(0).normal(0, 0.01, 500)
    for window, horizon in ((64, 1), (16, 3)):
        x, y = updown_windows(r, window, horizon)
        n = len(r) - window - horizon + 1
        assert x.shape == (n, window, 2) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int32
        for i in (0, 7, n - 1):
            t = i + window - 1
            assert y[i] == int(r[t + 1 : t + 1 + horizon].sum() > 0)
            assert np.sign(x[i, -1, 0]) == np.sign(r[t])  # scaled return of the last step
    assert 0.4 < y.mean() < 0.6


def test_features_never_look_ahead():
    r = simulate_prices(3000, 5)["returns"]
    window, t = 64, 2000
    x, _ = updown_windows(r, window)
    changed = r.copy()
    changed[t + 1 :] = np.random.default_rng(1).standard_normal(len(r) - t - 1)
    x2, _ = updown_windows(changed, window)
    i = t - window + 1  # the window ending at t
    np.testing.assert_array_equal(x[: i + 1], x2[: i + 1])
    assert not np.array_equal(x[i + 1], x2[i + 1])  # the next window sees the change
    # The window ending at t is a function of r[: t + 1] only (plus one step for its label).
    x3, _ = updown_windows(r[: t + 2], window)
    np.testing.assert_array_equal(x3[-1], x[i])


def test_splits_are_deterministic_sized_and_cut_from_one_path():
    train, test = load_price_updown("train"), load_price_updown("test")
    assert (len(train), len(test)) == (26_566, 4_991)
    for source in (train, test):
        assert source.images.shape[1:] == (64, 2) and source.images.dtype == np.float32
        assert source.labels.dtype == np.int32
    again = load_price_updown("test")
    np.testing.assert_array_equal(test.images, again.images)
    np.testing.assert_array_equal(test.labels, again.labels)
    assert not np.array_equal(load_price_updown("test", seed=1).labels, test.labels)
    x, y = updown_windows(simulate_prices(series.NUM_STEPS, 0)["returns"])
    for split, source in (("train", train), ("test", test)):
        index = split_window_ends(split) - 63
        np.testing.assert_array_equal(source.images, x[index])
        np.testing.assert_array_equal(source.labels, y[index])


@pytest.mark.parametrize("window,horizon", [(64, 1), (32, 5)])
def test_split_is_chronological_with_a_gap_of_window_plus_horizon(window, horizon):
    train = split_window_ends("train", window, horizon)
    test = split_window_ends("test", window, horizon)
    last_train_step = train[-1] + horizon  # its label's last return
    first_test_step = test[0] - window + 1  # its first feature
    assert first_test_step - last_train_step - 1 >= window + horizon
    assert train[0] - window + 1 >= series.WARMUP
    assert test[-1] + horizon == series.NUM_STEPS - 1
    assert np.all(np.diff(train) == 1) and np.all(np.diff(test) == 1)


def test_generation_is_fast():
    start = time.perf_counter()
    load_price_updown("train", seed=3)
    load_price_updown("test", seed=3)
    assert time.perf_counter() - start < 2.0  # ~0.1 s


def test_series_stats_are_the_train_features_statistics():
    x = load_price_updown("train").images.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(x.mean(0), SERIES_STATS["mean"], atol=1e-3)
    np.testing.assert_allclose(x.std(0), SERIES_STATS["std"], atol=1e-3)


def test_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match="train"):
        load_price_updown("validation")


def test_the_data_has_signal_and_the_baselines_are_ordered(reference):
    b = reference
    assert (b["n_train"], b["n_test"]) == (26_566, 4_991)
    assert 0.6 < b["oracle"] < 0.7
    assert b["oracle"] > b["majority"] + 0.08
    # A causal rule cannot beat knowing the regime; simple rules do not beat the exact filter.
    assert b["hmm_filter"] < b["oracle"]
    assert b["last_sign"] < b["momentum"] < b["hmm_filter"] + 0.01
    assert b["majority"] + 0.05 < b["logistic"] < b["oracle"]
    assert b["momentum_k"] in (2, 4, 8, 16, 32)
    train, test = load_price_updown("train"), load_price_updown("test")
    majority = int(train.labels.mean() >= 0.5)
    assert b["majority"] == pytest.approx(np.mean(test.labels == majority))
