"""Generators of the documentation's pages and figures, run as `python -m docs.tools.<name>`.

Run them from the repository root (where `docs` is importable); each module's docstring says
what it writes.
"""
