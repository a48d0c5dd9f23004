"""Model compression: pruning (`prune`), weight sharing and quantization (`quantize`), entropy
coding (`coding`), the compressed file (`fileformat`: `save`, `load`, `compression_rate`) and
low-rank factorization by truncated SVD (`low_rank`).

`save` and `load` are imported on first use: the training loop imports `cnnjax.compress.prune`,
and importing this package must not pull the file format (and what it imports) in with it.
"""

_FILE_FORMAT = ("save", "load", "read_header", "compression_rate")


def __getattr__(name):
    if name in _FILE_FORMAT:
        from cnnjax.compress import fileformat

        return getattr(fileformat, name)
    raise AttributeError(f"module 'cnnjax.compress' has no attribute {name!r}")
