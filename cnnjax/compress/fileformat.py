"""The compressed model file: everything needed to rebuild a model's variables, and nothing else.

Layout: the 8 bytes `CNNJAXZ1`, a little-endian uint32 header length, the header (zlib-compressed
compact UTF-8 JSON: format version, model name and fields, class count, input shape and
preprocessing, and one entry per array saying how it is encoded and where its blobs lie), then the
blobs. Format 1 (the same with an uncompressed header) still reads. The
compression rate is `4 * (number of parameters) / (file size)`: the float32 dense parameters
against every byte of the file, header, biases, BatchNorm statistics, codebooks and Huffman
tables included.

Each array is stored in one of four encodings, the smallest of those its content allows.
Kernels (two or more axes) are scanned output-major, one filter or neuron after another (the
layout of Caffe and PyTorch), which keeps each neuron's kept inputs together:

* "raw": its values as little-endian float32 (or its own dtype).
* "shared": every entry as an index into a codebook of the array's distinct values (at most
  `2**bits` of them: run k-means weight sharing first), Huffman coded.
* "sparse": the nonzero entries as relative indices (gaps of `1 .. 2**index_bits`, Huffman coded,
  with filler entries for longer gaps, Han et al. 2016 Fig. 2) and their float32 values. Unless
  told, each array takes the index width (2 .. 10 bits) that makes it smallest: a narrow width
  spends fillers on long gaps, a wide one spends bits on every short one.
* "sparse_shared": relative indices as above, and codebook indices for the values, both Huffman
  coded; fillers take the extra symbol `len(codebook)` (the paper stores a zero weight there).

With `huffman=False`, symbols are packed at a fixed width instead (the "before Huffman" stage of
Han et al.'s Table 1). Values round-trip exactly (a stored -0.0 reads back as 0.0).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from cnnjax.compress import coding
from cnnjax.compress.quantize import per_layer
from cnnjax.errors import CheckpointError, ConfigError

MAGIC = b"CNNJAXZ1"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: the header is plain JSON
INDEX_WIDTHS = tuple(range(2, 11))  # searched when no index width is given
ENCODINGS = ("raw", "shared", "sparse", "sparse_shared")


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


class _Blobs:
    """Collects the payload; `add` returns the blob's `[offset, length]`."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        where = [self.size, len(data)]
        self.parts.append(data)
        self.size += len(data)
        return where


def _code(symbols: np.ndarray, alphabet: int, huffman: bool) -> tuple[dict, bytes, bytes]:
    """`(entry, table bytes, stream bytes)` for `symbols` in `range(alphabet)`."""
    if huffman:
        counts = np.bincount(symbols, minlength=alphabet)
        lengths = coding.code_lengths(dict(enumerate(counts.tolist())))
    else:
        width = max(1, math.ceil(math.log2(alphabet)))
        lengths = {s: width for s in range(alphabet)}
    table = np.zeros(alphabet, np.uint8)
    for symbol, bits in lengths.items():
        table[symbol] = bits
    stream, bit_count = coding.huffman_encode(symbols, lengths)
    return (
        {"count": int(symbols.size), "bits": bit_count, "alphabet": alphabet},
        table.tobytes(),
        stream,
    )


def _decode(entry: dict, table: bytes, stream: bytes) -> np.ndarray:
    lengths = {s: int(b) for s, b in enumerate(np.frombuffer(table, np.uint8)) if b}
    return coding.huffman_decode(stream, entry["bits"], lengths, entry["count"])


def _encodings(values: np.ndarray, bits: int | None, widths, huffman: bool, name: str):
    """Candidate encodings of one array: `[(encoding, fields, {blob name: bytes})]`, the sparse
    ones once per relative-index width in `widths`."""
    flat = values.reshape(-1)
    candidates = [("raw", {}, {"values": flat.astype(flat.dtype.newbyteorder("<")).tobytes()})]
    nonzero = np.flatnonzero(flat)
    codebook = None
    if bits is not None:
        codebook = np.unique(flat[nonzero]) if nonzero.size < flat.size else np.unique(flat)
        if codebook.size > 2**bits:
            raise ConfigError(
                f"{name} has {codebook.size} distinct values, more than 2**bits = {2**bits}: "
                "share its weights first (cnnjax.compress.quantize.share_weights)"
            )
        # Dense storage indexes every entry: a zero, if the array has any, takes one symbol more.
        full = np.unique(flat)
        if full.size <= 2**bits + (nonzero.size < flat.size):
            symbols = np.searchsorted(full, flat)
            entry, table, stream = _code(symbols, full.size, huffman)
            blobs = {"codebook": full.astype("<f4").tobytes(), "weight_table": table}
            candidates.append(("shared", {"weights": entry}, {**blobs, "weight_stream": stream}))
    if nonzero.size < flat.size:
        for index_bits in widths:
            candidates += _sparse_encodings(flat, nonzero, codebook, index_bits, huffman)
    return candidates


def _sparse_encodings(flat, nonzero, codebook, index_bits: int, huffman: bool) -> list:
    """The "sparse" (and, given a codebook, "sparse_shared") candidates at one index width."""
    candidates = []
    gaps, is_filler = coding.encode_gaps(nonzero, index_bits)
    gap_entry, gap_table, gap_stream = _code(gaps - 1, 2**index_bits, huffman)
    index_blobs = {"gap_table": gap_table, "gap_stream": gap_stream}
    fields = {"index_bits": index_bits, "gaps": gap_entry}
    positions = coding.decode_gaps(gaps, is_filler)
    stored = np.zeros(gaps.size, flat.dtype)
    stored[~is_filler] = flat[positions]
    candidates.append(
        (
            "sparse",
            fields,
            {**index_blobs, "values": stored.astype(stored.dtype.newbyteorder("<")).tobytes()},
        )
    )
    if codebook is not None:
        symbols = np.full(gaps.size, codebook.size, np.int64)  # fillers: the extra symbol
        symbols[~is_filler] = np.searchsorted(codebook, flat[positions])
        entry, table, stream = _code(symbols, codebook.size + 1, huffman)
        candidates.append(
            (
                "sparse_shared",
                {**fields, "weights": entry},
                {
                    **index_blobs,
                    "codebook": codebook.astype("<f4").tobytes(),
                    "weight_table": table,
                    "weight_stream": stream,
                },
            )
        )
    return candidates


def save(
    path: str,
    model_name: str,
    variables: Mapping[str, Any],
    *,
    model_fields: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    input_shape=None,
    preprocess: Mapping[str, Any] | None = None,
    bits=None,
    index_bits=None,
    huffman: bool = True,
) -> list[dict]:
    """Writes `variables` compressed to `path` (atomically) and returns the per-array report.

    Args:
      path: the file to write.
      model_name: registry name of the model.
      variables: `{"params": ..., "batch_stats": ...}`.
      model_fields: the module fields the model was built with (JSON-serializable, as in a
        config's `model_kwargs`).
      num_classes, input_shape: what the model was built for.
      preprocess: how inputs must be prepared (e.g. `{"mean": ..., "std": ..., "fit": "pad"}`).
      bits: codebook bits, one int for every kernel or `{glob: bits}` (None: values stay float).
        A kernel given bits must hold at most `2**bits` distinct values.
      index_bits: relative-index bits, an int or `{glob: bits}` (Han et al. 2016 used 8 for
        convolutions and 5 for dense kernels); None, or a layer no glob matches: the width in
        `INDEX_WIDTHS` that stores that layer in the fewest bytes.
      huffman: Huffman-code the symbols (else a fixed width per symbol).

    Returns:
      One dict per array: name, shape, encoding, weights, nonzero, and bytes per part.
    """
    header = {
        "format": FORMAT_VERSION,
        "model": model_name,
        "model_fields": dict(model_fields or {}),
        "num_classes": num_classes,
        "input_shape": list(input_shape) if input_shape is not None else None,
        "preprocess": dict(preprocess or {}),
        "arrays": [],
    }
    blobs, report = _Blobs(), []
    for collection in ("params", "batch_stats"):
        tree = variables.get(collection) or {}
        for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = _leaf_name(leaf_path)
            values = np.asarray(leaf)
            is_kernel = values.ndim > 1 and collection == "params"
            layer_bits = per_layer(name, bits) if is_kernel else None
            if layer_bits is not None and (not isinstance(layer_bits, int) or layer_bits < 1):
                raise ConfigError(f"bits of {name} must be an integer >= 1, got {layer_bits!r}")
            layer_index = per_layer(name, index_bits) if index_bits is not None else None
            if layer_index is not None and (
                not isinstance(layer_index, int) or isinstance(layer_index, bool) or layer_index < 1
            ):
                raise ConfigError(
                    f"index_bits of {name} must be an integer >= 1, got {layer_index!r}"
                )
            widths = INDEX_WIDTHS if layer_index is None else (layer_index,)
            # Kernels are scanned filter by filter (output axis first, as Caffe and PyTorch lay
            # them out): a neuron's kept inputs cluster (MNIST's border pixels are pruned in
            # every column of LeNet-300-100's fc1), which gives the relative indices short,
            # peaked gaps; row-major HWIO / (in, out) order interleaves the filters.
            scanned = np.moveaxis(values, -1, 0) if values.ndim > 1 else values
            candidates = _encodings(scanned, layer_bits, widths, huffman, name)
            encoding, fields, parts = min(candidates, key=lambda c: sum(map(len, c[2].values())))
            entry = {
                "collection": collection,
                "path": [str(getattr(k, "key", k)) for k in leaf_path],
                "shape": list(values.shape),
                "output_major": values.ndim > 1,
                "dtype": values.dtype.str,
                "encoding": encoding,
                **fields,
                "blobs": {part: blobs.add(data) for part, data in parts.items()},
            }
            header["arrays"].append(entry)
            report.append(
                {
                    "name": f"{collection}/{name}",
                    "shape": tuple(values.shape),
                    "encoding": encoding,
                    "weights": int(values.size),
                    "nonzero": int(np.count_nonzero(values)),
                    "bits": layer_bits,
                    "index_bits": fields.get("index_bits"),
                    "bytes": {part: len(data) for part, data in parts.items()},
                }
            )
    text = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(text)) + text)
        for part in blobs.parts:
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return report


def read_header(path: str) -> tuple[dict, int]:
    """`(header, offset of the first blob)` of a compressed model file.

    Raises:
      CheckpointError: not such a file, or a damaged one.
    """
    try:
        with open(path, "rb") as f:
            start = f.read(12)
            if len(start) < 12 or start[:8] != MAGIC:
                raise CheckpointError(f"{path} is not a cnnjax compressed model (no {MAGIC!r})")
            (length,) = struct.unpack("<I", start[8:])
            text = f.read(length)
        header = json.loads(text if text[:1] == b"{" else zlib.decompress(text))
    except FileNotFoundError:
        raise CheckpointError(f"compressed model {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError, zlib.error) as error:
        raise CheckpointError(f"{path}: damaged header ({error})") from None
    if header.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path}: format {header.get('format')!r}, this cnnjax reads "
            + ", ".join(map(str, READABLE_FORMATS))
        )
    return header, 12 + length


def load(path: str) -> tuple[str, dict]:
    """`(model_name, variables)` from a file written by `save`; `read_header` gives the rest."""
    header, offset = read_header(path)
    with open(path, "rb") as f:
        payload = f.read()[offset:]
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for entry in header["arrays"]:
        blob = {part: payload[o : o + n] for part, (o, n) in entry["blobs"].items()}
        if any(len(data) != entry["blobs"][part][1] for part, data in blob.items()):
            raise CheckpointError(f"{path} is truncated (array {'/'.join(entry['path'])})")
        if entry.get("output_major"):
            shape = entry["shape"]
            scanned = _decode_array({**entry, "shape": [shape[-1], *shape[:-1]]}, blob)
            values = np.ascontiguousarray(np.moveaxis(scanned, 0, -1))
        else:
            values = _decode_array(entry, blob)
        node = variables[entry["collection"]]
        for key in entry["path"][:-1]:
            node = node.setdefault(key, {})
        node[entry["path"][-1]] = values
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    return header["model"], variables


def _decode_array(entry: dict, blob: dict) -> np.ndarray:
    dtype = np.dtype(entry["dtype"])
    size = int(np.prod(entry["shape"], dtype=np.int64))
    encoding = entry["encoding"]
    if encoding not in ENCODINGS:
        raise CheckpointError(f"unknown encoding {encoding!r} (valid: {', '.join(ENCODINGS)})")
    if encoding == "raw":
        return (
            np.frombuffer(blob["values"], dtype.newbyteorder("<"))
            .astype(dtype)
            .reshape(entry["shape"])
        )
    if encoding == "shared":
        codebook = np.frombuffer(blob["codebook"], "<f4")
        symbols = _decode(entry["weights"], blob["weight_table"], blob["weight_stream"])
        return codebook[symbols].astype(dtype).reshape(entry["shape"])
    gaps = _decode(entry["gaps"], blob["gap_table"], blob["gap_stream"]) + 1
    if encoding == "sparse":
        stored = np.frombuffer(blob["values"], dtype.newbyteorder("<"))
        # A filler stores 0.0 and a kept weight is nonzero: the values say which is which.
        is_filler = stored == 0
    else:
        codebook = np.frombuffer(blob["codebook"], "<f4")
        symbols = _decode(entry["weights"], blob["weight_table"], blob["weight_stream"])
        is_filler = symbols == codebook.size
        stored = np.where(is_filler, 0.0, codebook[np.minimum(symbols, codebook.size - 1)])
    positions = coding.decode_gaps(gaps, is_filler)
    flat = np.zeros(size, dtype)
    flat[positions] = stored[~is_filler]
    return flat.reshape(entry["shape"])


def compression_rate(path: str) -> float:
    """Float32 bytes of the file's parameters over the file's size in bytes."""
    header, _ = read_header(path)
    count = sum(
        int(np.prod(e["shape"], dtype=np.int64))
        for e in header["arrays"]
        if e["collection"] == "params"
    )
    return 4 * count / os.path.getsize(path)
