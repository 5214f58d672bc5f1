"""Whether a prepared cache was built as a data path reads: its index.json's settings (the rate,
the preprocessing, whether limb leads were derived) against what the data config expects.
A mismatch is refused, naming the cache, the setting and the `prepare` rerun that rebuilds it
(source.CacheSource checks it when it opens a cache; settings_file.py is prepare's own check of
a rerun against settings.json).
"""
from __future__ import annotations

from typing import Any, Mapping


class _Unchecked:
    def __repr__(self) -> str:
        return "UNCHECKED"


# A setting the caller does not check. Not None: data.preprocess=None is a value (no record
# preprocessing), which a cache built with preprocessing must be refused for.
UNCHECKED: Any = _Unchecked()


def check_settings(index: Mapping, path: str, *, target_fs: Any = UNCHECKED,
                   preprocess: Any = UNCHECKED, derive_limb_leads: Any = UNCHECKED) -> None:
    """ValueError when the cache of `index` (index.json at `path`) was built at another rate,
    with other preprocessing or limb-lead derivation than expected (UNCHECKED: not checked)."""
    settings = index["settings"]
    if derive_limb_leads is not UNCHECKED \
            and bool(settings["derive_limb_leads"]) != derive_limb_leads:
        raise ValueError(f"{path}: cache built with derive_limb_leads="
                         f"{settings['derive_limb_leads']} but data.derive_limb_leads="
                         f"{derive_limb_leads}; rebuild it with `crema-jax prepare`")
    if target_fs is not UNCHECKED and float(settings["target_fs"]) != float(target_fs):
        raise ValueError(f"{path}: cache built at target_fs={settings['target_fs']} but "
                         f"data.target_fs={target_fs}; rebuild it with `crema-jax prepare`")
    if preprocess is not UNCHECKED and settings["preprocess"] != preprocess:
        raise ValueError(f"{path}: cache built with other preprocessing than data.preprocess "
                         f"({_preprocess_difference(settings, preprocess)}); rebuild it with "
                         f"`crema-jax prepare{_preset_flag(preprocess)}`")


def _preprocess_difference(settings: Mapping, expected) -> str:
    """The preprocessing fields a cache and a data path disagree on, e.g. "high_hz: cache 40.0,
    data 20.0" (the two 15-field dicts had been printed whole)."""
    cached = settings["preprocess"]
    name = settings.get("preprocess_preset")
    built = f"--preprocess={name}" if name else "its preprocessing"
    if cached is None or expected is None:
        return (f"cache {built}, data {'no' if expected is None else 'its own'} "
                "record preprocessing")
    keys = sorted(set(cached) | set(expected))
    return f"cache {built}; " + ", ".join(
        f"{k}: cache {cached.get(k)!r}, data {expected.get(k)!r}" for k in keys
        if cached.get(k) != expected.get(k))


def _preset_flag(expected) -> str:
    """" --preprocess=NAME" of the preset whose preprocessing is `expected` ("" when none is)."""
    from crema_jax.data import presets

    return next((f" --preprocess={name}" for name in presets.PRESETS
                 if presets.preprocessing(name).to_dict() == expected), "")
