"""The runtime layer every other layer builds on: files written atomically, the workdir, Orbax
checkpoints, the device mesh, the optimizer and pytree helpers. It imports no other crema_jax
package."""
