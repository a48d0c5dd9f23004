"""grain pipelines: determinism, resumability, epoch coverage, exact evaluation batches."""

import itertools

import numpy as np
import pytest

from cnnjax.data import ArraySource, eval_batches, fit_images, fit_source, train_batches
from cnnjax.errors import ShapeError


def indexed_source(n=50, shape=(4, 4, 1)):
    """Each image is filled with its own index, so batches reveal which examples they hold."""
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, *shape), np.uint8)
    return ArraySource(images, np.arange(n))


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_training_batches_are_a_function_of_the_seed():
    source = indexed_source()
    a = take(train_batches(source, 8, seed=3), 10)
    b = take(train_batches(source, 8, seed=3), 10)
    c = take(train_batches(source, 8, seed=4), 10)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


def test_start_step_resumes_the_same_stream():
    source = indexed_source()
    full = take(train_batches(source, 8, seed=0), 12)
    resumed = take(train_batches(source, 8, seed=0, start_step=7), 5)
    for x, y in zip(full[7:], resumed):
        np.testing.assert_array_equal(x["label"], y["label"])


def test_every_epoch_is_a_new_permutation():
    source = indexed_source(n=40)
    labels = np.concatenate([b["label"] for b in take(train_batches(source, 10, seed=0), 8)])
    first, second = labels[:40], labels[40:]
    assert sorted(first) == list(range(40)) and sorted(second) == list(range(40))
    assert not np.array_equal(first, second)


def test_batches_hold_uint8_images_and_int32_labels():
    batch = next(train_batches(indexed_source(), 8, seed=0))
    assert batch["image"].shape == (8, 4, 4, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["label"])


def test_worker_processes_give_the_same_batches():
    source = indexed_source()
    local = take(train_batches(source, 8, seed=5, start_step=2), 4)
    workers = take(train_batches(source, 8, seed=5, start_step=2, num_workers=2), 4)
    for x, y in zip(local, workers):
        np.testing.assert_array_equal(x["label"], y["label"])


@pytest.mark.parametrize("batch_size", [7, 10, 64])
def test_eval_batches_cover_every_example_once(batch_size):
    source = indexed_source(n=30)
    batches = list(eval_batches(source, batch_size))
    assert all(b["image"].shape[0] == batch_size for b in batches)
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(30))


def test_fit_pads_to_the_centre():
    images = np.full((2, 28, 28, 1), 255, np.uint8)
    out = fit_images(images, (32, 32, 1), "pad")
    assert out.shape == (2, 32, 32, 1)
    assert out[:, :2].max() == 0 and out[:, -2:].max() == 0 and out[:, 2:30, 2:30].min() == 255


def test_fit_resizes_and_repeats_channels():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    out = fit_images(images, (32, 32, 3), "resize")
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert abs(float(out.mean()) - float(images.mean())) < 3


def test_fit_refuses_what_cannot_map():
    with pytest.raises(ShapeError, match="use data.fit='resize'"):
        fit_images(np.zeros((1, 40, 40, 1), np.uint8), (32, 32, 1), "pad")
    with pytest.raises(ShapeError, match="3 channels but the model expects 1"):
        fit_images(np.zeros((1, 32, 32, 3), np.uint8), (32, 32, 1), "pad")


def test_inputs_already_of_the_model_shape_pass_through_and_others_are_named():
    series = np.random.default_rng(0).normal(size=(5, 64, 2)).astype(np.float32)
    assert fit_images(series, (64, 2), "pad") is series  # 1-D windows: nothing to fit
    with pytest.raises(ShapeError, match=r"inputs of shape \(64, 2\) do not fit .*\(32, 2\)"):
        fit_images(series, (32, 2), "pad")


def test_lazy_fitting_equals_eager_fitting():
    source = indexed_source(n=6, shape=(28, 28, 1))
    eager = fit_source(source, (32, 32, 1), "pad")

    class Lazy:  # a non-array source, like a TFDS data_source
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            return source[i]

    lazy = fit_source(Lazy(), (32, 32, 1), "pad")
    for i, j in itertools.product(range(6), [0]):
        np.testing.assert_array_equal(eager[i]["image"], lazy[i + j]["image"])
