"""Model compression (issue 18, in progress): entropy coding so far (`cnnjax.compress.coding`)."""
