"""crema_jax: CREMA ECG foundation models in JAX/Flax.

Layers, in the one direction of dependency:
  data -> models -> losses -> train -> evaluate / export
"""

__version__ = "0.1.0"
