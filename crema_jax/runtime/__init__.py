"""The runtime layer every other layer builds on: files written atomically, the workdir, Orbax
checkpoints, the device mesh, the optimizer, pytree helpers and the allowed ranges of numbers.
It imports no other crema_jax package."""
