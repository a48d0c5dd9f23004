"""Placeholder: filled in by the model-zoo work (issue 5)."""
