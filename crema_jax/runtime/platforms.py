"""A TPU is used only when one is present.

With libtpu installed (the `test` extra brings it), JAX initialises its TPU backend on every
machine, and on one without a TPU libtpu prints "INVALID_ARGUMENT" errors about TPU worker
hostnames before JAX falls back to another backend. So before JAX starts (no jax import here),
a command leaves TPU out of JAX_PLATFORMS when no TPU is attached and the user set none:

- a TPU is present when /dev/accel* (TPU v2-v4 VMs) or a numbered /dev/vfio/N (v5e and later)
  exists, or the PCI bus has a Google TPU (vendor 0x1ae0, as JAX itself checks);
- the platforms kept are the GPU backends whose JAX plugin is installed ("cuda", "rocm": JAX
  skips cuda quietly without an NVIDIA device) and "cpu". A plugin of another kind leaves
  JAX's own choice untouched.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import pathlib
import pkgutil

GOOGLE_PCI_VENDOR = "0x1ae0"
# JAX plugin entry points (group "jax_plugins") and their platform names.
GPU_PLUGIN_PREFIXES = {"xla_cuda": "cuda", "cuda": "cuda", "xla_rocm": "rocm", "rocm": "rocm"}


def tpu_worker_hosts(environ=os.environ) -> list[str]:
    """The TPU VM's worker hosts (TPU_WORKER_HOSTNAMES, comma-separated; blanks dropped): more
    than one on a pod slice."""
    return [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]


def tpu_present() -> bool:
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if pathlib.Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return False


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def jax_plugins() -> list[str]:
    """The names of the installed JAX plugins, found as JAX finds them: entry points of the
    group "jax_plugins" and modules of the `jax_plugins` namespace package (none imported)."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        names.update(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations))
    return sorted(names)


def platforms_without_tpu(environ, *, tpu: bool, libtpu: bool, plugins) -> str | None:
    """The JAX_PLATFORMS value to set, or None to leave JAX's choice: None when the user chose
    (JAX_PLATFORMS or JAX_PLATFORM_NAME set, even empty), a TPU is present, libtpu is not
    installed, or a plugin of an unknown kind is."""
    if "JAX_PLATFORMS" in environ or "JAX_PLATFORM_NAME" in environ or tpu or not libtpu:
        return None
    kept = []
    for name in plugins:
        platform = next((p for prefix, p in GPU_PLUGIN_PREFIXES.items()
                         if name.startswith(prefix)), None)
        if platform is None:
            return None
        if platform not in kept:
            kept.append(platform)
    return ",".join(kept + ["cpu"])


def use_tpu_only_when_present(environ=os.environ) -> str | None:
    """Sets JAX_PLATFORMS in `environ` by platforms_without_tpu (before JAX initialises its
    backends); returns the value set, or None."""
    if "JAX_PLATFORMS" in environ or "JAX_PLATFORM_NAME" in environ:
        return None  # the user's choice, without probing devices or packages
    value = platforms_without_tpu(environ, tpu=tpu_present(), libtpu=libtpu_installed(),
                                  plugins=jax_plugins())
    if value is not None:
        environ["JAX_PLATFORMS"] = value
    return value
