"""attnflow engine: attention state, JAX kernels, stores, loaders and evaluation.

Nothing in this package imports Kafka or Faust; ``streams`` is the glue that feeds it.
"""
