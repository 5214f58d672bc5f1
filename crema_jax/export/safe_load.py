"""Safe, explicit loading of PyTorch weight files: never execute pickled code.

- `.safetensors` is parsed here directly (header JSON + raw little-endian buffers), so importing it
  needs no torch, handles bfloat16 (numpy's safetensors reader cannot) and reports a truncated file
  precisely.
- Any other file is a torch pickle: it is opened ONLY with `torch.load(..., weights_only=True)`,
  which restores plain tensors, dicts, lists and numbers and refuses every other object. A file
  that needs arbitrary unpickling is refused with an explanation, never loaded "just this once".
- Floating weights come back as float32 numpy arrays (float16/bfloat16/float64 upcast or cast).
- `check_state_dict` compares a state_dict with the expected keys and shapes and lists EVERY
  missing, unexpected and mis-shaped key, and every weight that is not floating-point or holds
  NaN or inf, in one error, so a user fixes a file in one round.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from crema_jax.runtime import files

TORCH_INSTALL_HINT = "pip install crema_jax[torch]"

# safetensors dtype tag -> numpy dtype (all little-endian on disk).
_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # The format's own limit; larger means a corrupt file.
_MAX_DIMS, _MAX_ELEMENTS = 8, 2**48  # a weight has at most 5; no file holds 2**48 numbers


class CheckpointFileError(ValueError):
    """A weight file that cannot be used as it is; the message says why and what was expected."""


class UnsafeCheckpointError(CheckpointFileError):
    """A torch pickle that would need arbitrary code execution to load."""


def json_problem(err: BaseException) -> str:
    """Why JSON text did not parse, in words: "nested too deeply" for a RecursionError, "a
    number of more than N digits" for Python's int limit (whose own message advises
    sys.set_int_max_str_digits), else the parser's message."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    text = str(err)
    limit = re.search(r"Exceeds the limit \((\d+) digits\)", text)
    if limit:
        return f"a number of more than {limit.group(1)} digits"
    return text.splitlines()[0] if text else type(err).__name__


def parse_json(text, where: str) -> Any:
    """json.loads(text), or a CheckpointFileError "`where`: not valid JSON (why)"."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError included
        raise CheckpointFileError(f"{where}: not valid JSON ({json_problem(err)})") from None


def import_torch(purpose: str):
    """torch, or an ImportError that says how to get it."""
    try:
        import torch  # Lazy: safetensors files and the JAX side never need torch.
    except ImportError as err:
        raise ImportError(f"{purpose} needs PyTorch, which is not installed: run "
                          f"`{TORCH_INSTALL_HINT}`") from err
    return torch


def to_float32(array: np.ndarray) -> np.ndarray:
    """Floating arrays (float16, bfloat16, float64) -> float32; other dtypes unchanged."""
    if array.dtype == ml_dtypes.bfloat16 or np.issubdtype(array.dtype, np.floating):
        return np.asarray(array, dtype=np.float32)
    return np.asarray(array)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors as float32/int numpy arrays, metadata) of a .safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointFileError(f"{path}: {size} bytes, too short for a safetensors header "
                                      "(expected an 8-byte header length first)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointFileError(
                f"{path}: safetensors header claims {header_len} bytes but the file has "
                f"{size} bytes: the file is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError) as err:  # a 5000-digit number: a ValueError
            raise CheckpointFileError(f"{path}: unreadable safetensors header (not valid JSON: "
                                      f"{json_problem(err)})") from None
        data = f.read()
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{path}: the safetensors header is a JSON "
                                  f"{type(header).__name__}, expected an object of tensors")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointFileError(f"{path}: the safetensors __metadata__ must map strings to "
                                  "strings")
    tensors, problems, beyond = {}, [], []
    for key, info in header.items():
        problem = _entry_problem(info)
        if problem:
            problems.append(f"{key}: {problem}")
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if dtype is None:
            problems.append(f"{key}: unsupported dtype {info['dtype']!r} (expected one of "
                            f"{', '.join(_ST_DTYPES)})")
        elif end > len(data):
            beyond.append(f"{key}: bytes {start}..{end} lie beyond the {len(data)} data bytes")
        elif end - start != dtype.itemsize * math.prod(shape):
            problems.append(f"{key}: {end - start} bytes do not hold {shape} {info['dtype']}")
        else:
            array = np.frombuffer(data, dtype=dtype, count=math.prod(shape),
                                  offset=start).reshape(shape)
            tensors[key] = to_float32(array).copy()
    if problems or beyond:  # the first few: a truncated file has every later tensor beyond
        every = problems + beyond  # its end
        shown = every[:3] + ([f"and {len(every) - 3} more tensors"] if len(every) > 3 else [])
        what = ("not a complete safetensors file (truncated?)" if not problems else
                "not a valid safetensors file")
        raise CheckpointFileError(f"{path}: {what}: " + "; ".join(shown))
    tiling = _tiling_problem(header, len(data))
    if tiling:  # two tensors on the same bytes had been read as each other's weights
        raise CheckpointFileError(f"{path}: not a valid safetensors file: {tiling} (the format's "
                                  "tensors tile the data bytes in order, with no overlap or gap)")
    return tensors, dict(metadata)


def _tiling_problem(header: dict, data_bytes: int) -> str | None:
    """Where the tensors' data_offsets fail to tile [0, data_bytes) (None when they do)."""
    spans = sorted((info["data_offsets"][0], info["data_offsets"][1], key)
                   for key, info in header.items())
    end, before = 0, None
    for start, stop, key in spans:
        if start != end:
            where = f"after {before}, which ends at byte {end}" if before else "at the start"
            what = "overlaps the tensor before it" if start < end else "leaves a gap"
            return f"tensor {key} starts at byte {start} and {what} ({where})"
        end, before = stop, key
    if end != data_bytes:
        return f"the tensors end at byte {end} of the {data_bytes} data bytes"
    return None


def _entry_problem(info) -> str | None:
    """Why a safetensors header entry is malformed (None when it is well-formed)."""
    if not isinstance(info, dict):
        return f"expected an object with dtype, shape and data_offsets, got {type(info).__name__}"
    if not isinstance(info.get("dtype"), str):
        return f"dtype must be a string, got {info.get('dtype')!r}"
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"shape must be a list of non-negative integers, got {_short(shape)}"
    if len(shape) > _MAX_DIMS or math.prod(max(d, 1) for d in shape) > _MAX_ELEMENTS:
        # numpy refuses more than 64 dimensions, and sizes whose product overflows, even
        # when one of them is 0 ("Maximum allowed dimension exceeded")
        return (f"shape {_short(shape)}: expected at most {_MAX_DIMS} dimensions of at most "
                "2**48 elements in all")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        return f"data_offsets must be two integers 0 <= start <= end, got {offsets!r}"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


_MAX_NESTING = 32  # a checkpoint nests a state_dict a few levels deep


def _tensors_to_numpy(obj: Any, torch, path: str, where: str = "", depth: int = 0) -> Any:
    """Tensors -> numpy arrays, through dicts, lists and tuples; CheckpointFileError naming the
    entry for a tensor that is not a dense CPU-copyable one (sparse, meta, quantised), a key
    that is not a string, or nesting deeper than _MAX_NESTING."""
    if depth > _MAX_NESTING:
        raise CheckpointFileError(f"{path}: objects nested more than {_MAX_NESTING} deep at "
                                  f"{where or 'the top'}; expected a state_dict of tensors")
    if isinstance(obj, torch.Tensor):
        try:
            return to_float32(obj.detach().cpu().float().numpy() if obj.is_floating_point()
                              else obj.detach().cpu().numpy())
        except (TypeError, RuntimeError, NotImplementedError) as err:
            raise CheckpointFileError(
                f"{path}: tensor {where or '(the top)'} ({obj.layout}, {obj.dtype}, on "
                f"{obj.device}) is not a dense tensor of numbers ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); save dense tensors "
                "(.to_dense(), .dequantize())") from None
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise CheckpointFileError(f"{path}: key {bad[0]!r} ({type(bad[0]).__name__}) in "
                                      f"{where or 'the top'}; expected names (strings)")
        return {k: _tensors_to_numpy(v, torch, path, f"{where}.{k}" if where else k, depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_numpy(v, torch, path, f"{where}[{i}]", depth + 1)
                         for i, v in enumerate(obj))
    return obj


def read_torch_file(path: str) -> Any:
    """The object in a torch.save'd file, loaded with weights_only=True; tensors -> numpy."""
    torch = import_torch(f"Reading the PyTorch file {path}")
    import pickle

    try:
        with warnings.catch_warnings():  # torch's notes on legacy pickles: the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # A reference to a Python global: "Unsupported global: GLOBAL numpy...reconstruct",
        # "unsupported GLOBAL posix.system whose module posix is blocked" (torch's wording
        # varies; its advice to retry with weights_only=False is not passed on).
        named = re.search(r"\bGLOBAL ([\w.]+)", text)
        if named is None:
            found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            raise CheckpointFileError(
                f"{path}: not a torch.save file of weights: its bytes do not unpickle as one "
                f"({found.group(1).strip() if found else text.splitlines()[0]})") from err
        raise UnsafeCheckpointError(
            f"{path}: refused. This file needs arbitrary Python objects unpickled (it names "
            f"{named.group(1)}), which can run code; only plain tensors, dicts, lists and numbers "
            "are loaded (torch.load with weights_only=True). Re-save the weights alone, e.g. "
            "torch.save({'model': model.state_dict()}, path), or as .safetensors") from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError, struct.error) as err:
        # The weights-only unpickler's own failures on bytes that are no pickle at all.
        raise CheckpointFileError(f"{path}: not a readable torch.save file (truncated or "
                                  f"corrupt?): {type(err).__name__}: {err}") from err
    return _tensors_to_numpy(obj, torch, path)


def read_weight_file(path: str) -> tuple[Any, dict[str, str]]:
    """(loaded object, safetensors metadata or {}) for a .safetensors or torch file."""
    if not os.path.isfile(path):  # (a FIFO would block the reader)
        kind = files.special_kind(path, follow_links=True)
        what = (("a folder" if kind == "a folder" else f"{kind}, not a regular file") if kind
                else "no such file")
        raise CheckpointFileError(f"{path}: {what}; expected a .safetensors or torch.save file")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_file(path), {}


def extract_state_dict(obj: Any, path: str, container_keys: tuple[str, ...] = ()) -> dict:
    """The flat {name: array} inside `obj`: obj itself, or obj[k] for the first k present."""
    if isinstance(obj, Mapping):
        for key in container_keys:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        wanted = " or ".join(f"{{'{k}': state_dict}}" for k in container_keys) or "a state_dict"
        found = (f"a {type(obj).__name__} with keys {sorted(map(str, obj))[:8]}"
                 if isinstance(obj, Mapping) else f"a {type(obj).__name__}")
        raise CheckpointFileError(f"{path}: expected a flat state_dict of tensors or {wanted}; "
                                  f"found {found}")
    return dict(obj)


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Drop `prefix` when EVERY key carries it (e.g. 'module.' from DataParallel)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def check_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                     *, path: str, layout: str, ignored: tuple[str, ...] = ()) -> None:
    """Raise CheckpointFileError listing all missing, unexpected and mis-shaped keys."""
    present = {k for k in state_dict if not any(p in k for p in ignored)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    misshaped = sorted(f"{k}: file {tuple(state_dict[k].shape)}, expected {tuple(expected[k])}"
                       for k in present & set(expected)
                       if tuple(state_dict[k].shape) != tuple(expected[k]))
    # Weights are floating-point numbers (read as float32) and finite: integer tensors would be
    # truncated weights, NaN or inf ones give NaN features that every later step passes on.
    not_float = sorted(f"{k}: {state_dict[k].dtype}" for k in present & set(expected)
                       if state_dict[k].dtype.kind != "f")
    not_finite = sorted(f"{k}: {int(np.size(v) - np.isfinite(v).sum())} NaN or inf values"
                        for k, v in state_dict.items() if k in present & set(expected)
                        and v.dtype.kind == "f" and not np.isfinite(v).all())
    if not (missing or unexpected or misshaped or not_float or not_finite):
        return
    # One line, as the command prints it: the groups apart (". "), each entry apart ("; ").
    groups = [f"{title} ({len(items)}): " + "; ".join(items) for title, items in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("mis-shaped keys", misshaped), ("not floating-point", not_float),
        ("not finite", not_finite)) if items]
    head = (f"{path}: does not match the {layout!r} layout of the configured model"
            if missing or unexpected or misshaped else f"{path}: holds unusable weights")
    raise CheckpointFileError(f"{head}: " + ". ".join(groups))
