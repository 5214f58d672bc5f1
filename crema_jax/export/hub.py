"""Weights by Hugging Face hub id: `hf://OWNER/REPO[@REVISION][/FILE]`, fetched through
huggingface_hub (the `hub` extra: `pip install crema_jax[hub]`).

    hf://PKUDigitalHealth/ECGFounder/12_lead_ECGFounder.pth     one weight file, branch main
    hf://OWNER/REPO@v1.0                                        a folder export-torch --hub_folder
                                                                wrote (config.json names the rest)

huggingface_hub does the fetching: its download cache (HF_HUB_CACHE or HF_HOME), its offline
mode (HF_HUB_OFFLINE=1 reads the cache only) and its token (HF_TOKEN or `hf auth login`, for
private and gated repositories). The commit actually fetched is returned, so that an import can
record it: a branch or tag moves, a commit does not. Every failure (an unknown repository,
revision or file, no network and nothing cached) is a HubError: one line saying what was asked
and what to do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

SCHEME = "hf://"
INSTALL_HINT = "pip install crema_jax[hub]"


class HubError(ValueError):
    """A hub id that cannot be fetched; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class HubRef:
    repo_id: str            # OWNER/REPO
    revision: str | None    # branch, tag or commit; None: the repository's default (main)
    filename: str | None    # a file in the repository; None: a hub folder (config.json)

    def uri(self, filename: str | None = None) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        name = filename or self.filename
        return f"{SCHEME}{self.repo_id}{rev}" + (f"/{name}" if name else "")


def is_hub_id(spec) -> bool:
    return str(spec).startswith(SCHEME)


def parse(spec: str) -> HubRef:
    """`hf://OWNER/REPO[@REVISION][/FILE]` -> HubRef; HubError when it is not one."""
    expected = f"expected {SCHEME}OWNER/REPO[@REVISION][/FILE]"
    parts = str(spec)[len(SCHEME):].split("/") if is_hub_id(spec) else []
    if len(parts) < 2 or not all(parts):
        raise HubError(f"{spec}: not a hub id; {expected}")
    repo, _, revision = parts[1].partition("@")
    if not repo or (_ and not revision):
        raise HubError(f"{spec}: not a hub id; {expected}")
    return HubRef(f"{parts[0]}/{repo}", revision or None, "/".join(parts[2:]) or None)


def _huggingface_hub():
    try:
        import huggingface_hub  # Optional: only hf:// ids need it.
        import huggingface_hub.constants  # (its lazy top level does not load these two)
        import huggingface_hub.errors
    except ImportError as err:
        raise ImportError(f"{SCHEME} ids need huggingface_hub, which is not installed: run "
                          f"`{INSTALL_HINT}`") from err
    return huggingface_hub


def download(ref: HubRef, filename: str, *, missing_ok: bool = False) -> tuple[str | None, str]:
    """(local path in the hub cache, commit hash) of `filename` at `ref`'s revision; with
    missing_ok, (None, the revision) when the hub says the repository has no such file."""
    hub = _huggingface_hub()
    errors = hub.errors
    uri = ref.uri(filename)
    try:
        path = hub.hf_hub_download(ref.repo_id, filename, revision=ref.revision)
    except errors.GatedRepoError:
        raise HubError(f"{uri}: {ref.repo_id} is gated: accept its terms on the hub, then log in "
                       "(`hf auth login`, or set HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{uri}: no repository {ref.repo_id} on the hub (or it is private and "
                       "you are not logged in: `hf auth login`, or set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{uri}: {ref.repo_id} has no revision {ref.revision!r} (expected a "
                       "branch, tag or commit of the repository)") from None
    except errors.LocalEntryNotFoundError:
        why = ("offline mode is on (HF_HUB_OFFLINE)" if hub.constants.HF_HUB_OFFLINE
               else "the hub could not be reached")
        raise HubError(f"{uri}: not in the hub cache ({hub.constants.HF_HUB_CACHE}) and {why}; "
                       "fetch it once with a connection") from None
    except errors.EntryNotFoundError:  # the hub's answer (a cache miss offline is caught above)
        if missing_ok:
            return None, ref.revision
        raise HubError(f"{uri}: {ref.repo_id} has no file {filename!r} at revision "
                       f"{ref.revision or 'main'}") from None
    except errors.HFValidationError as err:
        raise HubError(f"{uri}: not a valid hub id ({_first_line(err)})") from None
    except OSError as err:  # HTTP and network errors
        raise HubError(f"{uri}: download failed ({_first_line(err)})") from None
    # The cache keeps every file at snapshots/<commit>/<filename>.
    commit = pathlib.Path(path).parents[len(pathlib.PurePosixPath(filename).parts) - 1].name
    return path, commit


def fetch(spec: str, folder_config: str) -> tuple[str, dict]:
    """(local file or folder, source record) for a hub id. A folder id fetches `folder_config`
    (config.json), then the weight file it names, both at the same commit."""
    ref = parse(spec)
    if ref.filename is not None:
        path, commit = download(ref, ref.filename)
    else:
        config_path, commit = download(ref, folder_config)
        pinned = dataclasses.replace(ref, revision=commit)
        download(pinned, _weights_named_in(config_path, ref.uri(folder_config)))
        path = os.path.dirname(config_path)
    source = {"uri": spec, "repo_id": ref.repo_id, "revision": ref.revision or "main",
              "commit": commit, "file": ref.filename or folder_config}
    return path, source


def fetch_optional(spec: str, commit: str, filename: str) -> str | None:
    """The local path of `filename` in the hub id's repository at `commit` (the one its weight
    file was fetched at), or None when the repository has no such file there: the hub says so,
    or offline, the cache kept that answer. A HubError when neither can tell (offline and never
    asked): the result never depends on what the cache happens to hold."""
    hub = _huggingface_hub()
    ref = dataclasses.replace(parse(spec), revision=commit)
    # huggingface_hub's cache records a "no such file" answer as this sentinel (a private name:
    # without it, only the online answer tells).
    no_file = getattr(hub, "_CACHED_NO_EXIST", None)
    if no_file is not None and hub.try_to_load_from_cache(
            ref.repo_id, filename, revision=commit) is no_file:
        return None  # (hf_hub_download reads this record online only)
    return download(ref, filename, missing_ok=True)[0]


def _weights_named_in(config_path: str, uri: str) -> str:
    try:
        with open(config_path, encoding="utf-8") as f:
            name = json.load(f).get("weights")
    except (OSError, ValueError, AttributeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else _first_line(err)
        raise HubError(f"{uri}: not a crema_jax folder config ({why})") from None
    if not isinstance(name, str) or not name or os.path.basename(name) != name:
        raise HubError(f"{uri}: expected a \"weights\" entry naming a file in the folder, got "
                       f"{name!r}")
    return name


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
