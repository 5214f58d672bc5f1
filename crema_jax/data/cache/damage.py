"""The messages of a damaged cache shard (source.py finds the damage and raises them as
DamagedCacheError): one line each, naming the file (a local cache's shard, a remote cache's
shard by its URL, or the local copy of a remote shard) and the ways on. A rerun of prepare
into the same --out rewrites a shard only for a cache of this version's format
(record_format.FORMAT; prepare refuses to resume any other): a cache of an earlier format is
sent to prepare again into a new --out.
"""
from __future__ import annotations

import json
import shlex
from typing import Mapping

from crema_jax.data.cache.record_format import FORMAT

SKIP_FLAG = "--config.data.skip_damaged_cache_records=true"   # pretrain's
EVAL_SKIP_FLAG = "--skip_damaged_cache_records"                 # probe, finetune, compare

# The last way on of every damaged-shard message.
_SKIP_ADVICE = (f"or set {SKIP_FLAG} (pretrain; {EVAL_SKIP_FLAG} for probe, finetune and "
                "compare, skip_damaged_cache_records in a benchmark dataset) to skip and count "
                "its records")


class DamagedCacheError(ValueError):
    """A cache file that fails its checks; the message names it and the ways on."""


def _earlier_format(settings: Mapping) -> str | None:
    """What to do instead of resuming a cache of an earlier format (None: it is this version's;
    settings.json's "format", as index.json keeps it)."""
    found = settings.get("format")
    if found == FORMAT:
        return None
    return (f"prepare the cache again into a new --out (this one is of format {found}, which "
            f"prepare does not resume: it writes {FORMAT})")


def replaced_shard(path: str, problem: str, out: str, settings: Mapping) -> str:
    """A shard that is not the file prepare wrote (fingerprint.py): the rerun of prepare that
    builds it again (it checks every shard against its sidecar and rewrites those that differ)."""
    rebuild = _earlier_format(settings) or (f"rerun `{prepare_command(settings, out)}` (it "
                                            "rewrites the shards that differ from what it wrote)")
    return f"{path}: {problem}; the cache is damaged: {rebuild}, {_SKIP_ADVICE}"


def prepare_command(settings: Mapping, out: str) -> str:
    """The `crema-jax prepare` command line that built a cache of these settings (settings.json,
    as index.json keeps it) into `out`, quoted for a shell: a rerun of it resumes that cache."""
    flags = [f"--layout={settings.get('layout', 'wfdb_folder')}",
             f"--root={settings.get('root', 'DIR')}", f"--out={out}"]
    for key, value in sorted(dict(settings.get("layout_options") or {}).items()):
        flags.append(f"--layout_option={key}="
                     f"{value if isinstance(value, str) else json.dumps(value)}")
    for flag, key in (("target_fs", "target_fs"), ("preprocess", "preprocess_preset"),
                      ("dtype", "dtype"), ("records_per_shard", "records_per_shard")):
        if settings.get(key) is not None:
            flags.append(f"--{flag}={settings[key]}")
    return " ".join(["crema-jax prepare", *(shlex.quote(flag) for flag in flags)])


def _rewrite(settings: Mapping, shard: str) -> str:
    """How a damaged shard (`shard`: "this shard", "it") is written again."""
    return _earlier_format(settings) or (f"delete {shard} and its .json sidecar and rerun "
                                         "`crema-jax prepare` into the same --out (it rewrites "
                                         "missing shards)")


def damaged_shard(path: str, problem: str, settings: Mapping) -> str:
    """A shard that does not open, holds too few records or a record that fails its hash."""
    return (f"{path}: {problem}; the cache is damaged: {_rewrite(settings, 'this shard')}, "
            f"{_SKIP_ADVICE}")


def damaged_copy(path: str, url: str, problem: str, checked: bool, settings: Mapping) -> str:
    """A damaged local copy of the remote shard `url` (`checked`: the remote's bytes were as
    index.json records when it was fetched, so the remote is fine)."""
    remote = ("the remote shard is as prepare wrote it" if checked else
              "if the fresh copy fails alike, the remote shard is damaged: "
              f"{_rewrite(settings, 'it')}")
    return (f"{path}: {problem}; this is the local copy of {url}, damaged since it was fetched "
            f"({remote}): rerun to fetch it again (or delete {path}), {_SKIP_ADVICE}")
