"""Optional compiled extensions (built lazily, each with a pure-XLA fallback): `onednn`."""
