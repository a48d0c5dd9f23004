"""Developer-only helpers: references the tests and benchmarks compare cnnjax against.

Nothing in the library imports this package; it needs the `ref` extra (PyTorch, torchvision).
"""
