"""The model as data and as one whole network: the layer spec, the reference built from it,
the layers both the reference and the shards use, and the random streams that make a rank's
slice the same numbers the reference holds in that place."""
