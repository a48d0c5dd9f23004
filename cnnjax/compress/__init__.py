"""Model compression (issue 18, in progress): entropy coding (`coding`) and k-means weight sharing
(`quantize`) so far."""
