"""Dataset sources: splits, determinism, statistics and clear errors for missing data."""

import numpy as np
import pytest

from cnnjax.data import DATASETS, dataset_spec, load_source, read_all
from cnnjax.data.sources import synthetic
from cnnjax.errors import ConfigError, DataError


def test_digits_split_is_fixed_disjoint_and_stratified():
    train, test = load_source("digits", "train"), load_source("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert set(np.unique(test.labels)) == set(range(10))
    train_rows = {img.tobytes() + bytes([lab]) for img, lab in zip(train.images, train.labels)}
    test_rows = {img.tobytes() + bytes([lab]) for img, lab in zip(test.images, test.labels)}
    assert len(train_rows & test_rows) <= 2  # the digits set has a couple of exact duplicates
    again = load_source("digits", "train")
    np.testing.assert_array_equal(train.images, again.images)


def test_synthetic_is_a_function_of_the_seed():
    a, b, c = synthetic("train", seed=1), synthetic("train", seed=1), synthetic("train", seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(synthetic("test", seed=1).images[:8], a.images[:8])


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_embedded_dataset_statistics_match_the_spec(name):
    spec = dataset_spec(name)
    images = load_source(name, "train").images / 255.0
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), spec.mean, atol=5e-3)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), spec.std, atol=5e-3)


def test_unknown_dataset_and_split_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'mnist'"):
        load_source("minst", "train")
    with pytest.raises(ConfigError, match="valid choices: test, train"):
        load_source("digits", "validation")


def test_missing_tfds_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="not found.*TFDS_DATA_DIR.*download_and_prepare"):
        load_source("mnist", "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="shared/tfds.*local copy that TFDS cannot download"):
        load_source("cifar10_jpeg", "train", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("mnist", (60000, 10000)),
        ("fashion_mnist", (60000, 10000)),
        ("cifar10_jpeg", (50000, 10000)),
    ],
)
def test_offline_tfds_datasets_read_without_tensorflow(tfds_dir, name, sizes):
    spec = DATASETS[name]
    train = load_source(name, "train", tfds_dir)
    test = load_source(name, "test", tfds_dir)
    assert (len(train), len(test)) == sizes
    example = test[0]
    assert example["image"].shape == spec.image_shape and example["image"].dtype == np.uint8
    assert 0 <= int(example["label"]) < spec.num_classes


# Decoding a whole training split takes seconds per 10k images: the default suite checks MNIST's
# (the cheapest); `-m slow` also the other two.
@pytest.mark.parametrize(
    "name",
    [
        "mnist",
        pytest.param("fashion_mnist", marks=pytest.mark.slow),
        pytest.param("cifar10_jpeg", marks=pytest.mark.slow),
    ],
)
def test_offline_tfds_statistics_match_the_spec(tfds_dir, name):
    spec = dataset_spec(name)
    images = read_all(load_source(name, "train", tfds_dir)).images
    flat = images.reshape(-1, images.shape[-1]) / 255.0
    np.testing.assert_allclose(flat.mean(0), spec.mean, atol=3e-3)
    np.testing.assert_allclose(flat.std(0), spec.std, atol=3e-3)


def test_price_updown_is_the_series_dataset_with_its_measured_statistics():
    from cnnjax.data.series import SERIES_STATS

    spec = dataset_spec("price_updown")
    assert (spec.mean, spec.std) == (SERIES_STATS["mean"], SERIES_STATS["std"])
    source = load_source("price_updown", "test")
    example = source[0]
    assert example["image"].shape == spec.image_shape and example["image"].dtype == np.float32
    assert set(np.unique(source.labels)) == {0, 1}
