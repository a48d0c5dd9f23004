"""The compressed model file: exact round trips, every byte counted, damaged files refused."""

import json
import os
import struct
import zlib

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnjax import compress, models
from cnnjax.compress import fileformat, prune, quantize
from cnnjax.errors import CheckpointError, ConfigError


def pruned_shared_lenet(sparsity=0.9, bits=5):
    model = models.create_model("lenet5_caffe")
    variables = jax.jit(lambda k: model.init(k, np.zeros((1, 28, 28, 1), np.float32)))(
        jax.random.PRNGKey(0)
    )
    params = prune.apply_masks(
        variables["params"],
        prune.magnitude_masks(
            variables["params"], prune.layer_sparsities(variables["params"], sparsity)
        ),
    )
    params = jax.tree.map(np.asarray, params)
    for layer in ("conv2", "ip1"):
        centroids, assignments = quantize.share_weights(params[layer]["kernel"], bits)
        params[layer]["kernel"] = np.asarray(quantize.shared_values(centroids, assignments))
    return {"params": params}


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("huffman", [True, False])
def test_round_trip_is_exact_and_the_rate_counts_every_byte(tmp_path, huffman):
    variables = pruned_shared_lenet()
    variables["batch_stats"] = {"bn": {"mean": np.arange(3, dtype=np.float32)}}
    path = str(tmp_path / "lenet.cnnz")
    report = compress.save(
        path,
        "lenet5_caffe",
        variables,
        model_fields={"features": [20, 50]},
        num_classes=10,
        input_shape=(28, 28, 1),
        preprocess={"mean": [0.1307], "std": [0.3081]},
        bits={"conv2": 5, "ip1": 5},
        huffman=huffman,
    )
    name, loaded = compress.load(path)
    assert name == "lenet5_caffe"
    assert_same(loaded, variables)
    header, offset = compress.read_header(path)
    assert header["model_fields"] == {"features": [20, 50]} and header["input_shape"] == [28, 28, 1]
    assert header["preprocess"]["std"] == [0.3081]
    # File = magic + length + header + the blobs of the report, nothing else.
    blob_bytes = sum(sum(r["bytes"].values()) for r in report)
    assert os.path.getsize(path) == offset + blob_bytes
    assert compress.compression_rate(path) == 4 * 431_080 / os.path.getsize(path)
    encodings = {r["name"]: r["encoding"] for r in report}
    assert encodings["params/ip1/kernel"] == "sparse_shared"
    assert encodings["params/conv1/kernel"] in ("sparse", "raw")  # no bits: float values


def test_each_layer_takes_the_index_width_that_stores_it_smallest(tmp_path):
    variables = pruned_shared_lenet()
    bits = {"conv2": 5, "ip1": 5}

    def layer_bytes(index_bits):
        report = compress.save(
            str(tmp_path / "m.cnnz"), "m", variables, bits=bits, index_bits=index_bits
        )
        return {r["name"]: (sum(r["bytes"].values()), r["index_bits"]) for r in report}

    chosen = layer_bytes(None)
    for width in fileformat.INDEX_WIDTHS:
        for name, (size, _) in layer_bytes(width).items():
            assert chosen[name][0] <= size, (name, width)
    widths = {name: w for name, (_, w) in chosen.items() if w is not None}
    assert widths and set(widths.values()) <= set(fileformat.INDEX_WIDTHS)
    # A glob fixes a layer's width; the others are still searched.
    fixed = layer_bytes({"ip1*": 3})
    assert fixed["params/ip1/kernel"][1] == 3
    assert all(fixed[n] == chosen[n] for n in chosen if "ip1" not in n)


def test_huffman_beats_fixed_width_on_peaked_weights(tmp_path):
    rng = np.random.default_rng(0)
    codebook = np.linspace(-1, 1, 16).astype(np.float32)
    peaked = rng.choice(16, size=(300, 200), p=np.r_[[0.4, 0.3], np.full(14, 0.3 / 14)])
    variables = {"params": {"fc": {"kernel": codebook[peaked]}}}
    sizes = {}
    for huffman in (True, False):
        path = str(tmp_path / f"{huffman}.cnnz")
        compress.save(path, "lenet300_100", variables, bits=4, huffman=huffman)
        assert_same(compress.load(path)[1], variables)
        sizes[huffman] = os.path.getsize(path)
    # 4 bits fixed; Huffman lies within one bit of the entropy (about 2.7 bits here).
    p = np.bincount(peaked.reshape(-1), minlength=16) / peaked.size
    entropy = -np.sum(p * np.log2(p))
    assert sizes[False] > 300 * 200 * 4 / 8 > sizes[True] > 300 * 200 * entropy / 8


@given(
    values=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=4, max_side=7),
        elements=st.sampled_from([0.0, 0.0, 0.0, -1.5, 0.25, 3.0, 1e-3]),
    ),
    index_bits=st.integers(1, 4),
    bits=st.sampled_from([None, 2, 3]),
)
def test_any_array_round_trips(tmp_path_factory, values, index_bits, bits):
    path = str(tmp_path_factory.mktemp("rt") / "a.cnnz")
    variables = {"params": {"layer": {"kernel": values}, "bias": np.ones(3, np.float32)}}
    if bits is not None and len(np.unique(values[values != 0])) > 2**bits:
        with pytest.raises(ConfigError, match="distinct values"):
            compress.save(path, "m", variables, bits=bits, index_bits=index_bits)
        return
    compress.save(path, "m", variables, bits=bits, index_bits=index_bits)
    assert_same(compress.load(path)[1], variables)


def test_too_many_distinct_values_and_damaged_files_are_refused(tmp_path):
    variables = {"params": {"fc": {"kernel": np.arange(1, 65, dtype=np.float32).reshape(8, 8)}}}
    with pytest.raises(
        ConfigError, match=r"fc/kernel has 64 distinct values, more than 2\*\*bits = 32"
    ):
        compress.save(str(tmp_path / "x.cnnz"), "m", variables, bits=5)
    path = str(tmp_path / "ok.cnnz")
    compress.save(path, "m", variables)
    data = open(path, "rb").read()
    (tmp_path / "bad_magic").write_bytes(b"NOTMODEL" + data[8:])
    with pytest.raises(CheckpointError, match="not a cnnjax compressed model"):
        compress.load(str(tmp_path / "bad_magic"))
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        compress.load(str(tmp_path / "short"))
    (length,) = struct.unpack("<I", data[8:12])
    header, blobs = json.loads(zlib.decompress(data[12 : 12 + length])), data[12 + length :]

    def with_header(name, text):
        (tmp_path / name).write_bytes(data[:8] + struct.pack("<I", len(text)) + text + blobs)
        return str(tmp_path / name)

    # Format 1 stored the same header uncompressed: it still reads.
    plain = json.dumps({**header, "format": 1}).encode()
    assert_same(compress.load(with_header("format1", plain))[1], variables)
    newer = zlib.compress(json.dumps({**header, "format": 9}).encode())
    with pytest.raises(CheckpointError, match="format 9, this cnnjax reads 1, 2"):
        compress.load(with_header("newer", newer))
    with pytest.raises(CheckpointError, match="damaged header"):
        compress.load(with_header("garbled", b"x" + newer))
    with pytest.raises(CheckpointError, match="does not exist"):
        compress.load(str(tmp_path / "absent"))
    assert struct.unpack("<I", data[8:12])[0] < len(data)
    assert fileformat.MAGIC == data[:8]
