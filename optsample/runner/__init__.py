"""The runner layer (Hydra apps, results, loggers): the top of the layer stack; see README "Layout"."""
