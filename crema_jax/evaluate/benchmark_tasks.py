"""The benchmark's task file (datasets, tasks, protocols), its columns, and each cell's spec.

A task file is a Python config (configs/benchmarks/*.py) whose `get_config()` returns:

    datasets: {name: {layout, root, layout_options, classes, label_type, min_positives,
               folds, split_fractions}}   # the split rule: the layout's own splits (folds 0,
                                           # no split_fractions), K patient-grouped folds, or a
                                           # seeded per-source re-split
    tasks: [{name, dataset, leads: [lead sets], label_fractions: [...],
             train_source, test_source}]   # a source pair: train on A, test on all of B
    protocols: {probe: {...}, mlp: {...}, finetune: {...}}   # each one's head or recipe
    bootstrap, alpha, seed, batch_size, num_workers

Each task expands into one column per lead set and label fraction; every model (the --models
entries and the random rows: benchmark_models.py) is evaluated on every column by every
protocol: one cell per model x column x protocol (`cell_spec`: what its predictions depend on).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from crema_jax import config as config_lib
from crema_jax.evaluate import benchmark_models, protocols, ranges

PROTOCOLS = ("probe", "mlp", "finetune")
DATASET_DEFAULTS = {"layout": "wfdb_folder", "root": "", "layout_options": {}, "classes": [],
                    "label_type": "auto", "min_positives": 1, "folds": 0,
                    "split_fractions": [], "cache_dir": "", "skip_damaged_cache_records": False}
TASK_DEFAULTS = {"leads": ["12"], "label_fractions": [1.0], "train_source": "",
                 "test_source": ""}
SUITE_DEFAULTS = {"bootstrap": 1000, "alpha": 0.05, "seed": 0, "batch_size": 64,
                  "num_workers": 0}
LABEL_TYPES = ("auto", "multilabel", "multiclass")
# The kind of value each field holds ("texts": a list of distinct strings, "numbers": of
# distinct numbers); a wrong kind was a TypeError traceback deep in the run.
_KINDS = {"layout": str, "root": "path", "layout_options": dict, "classes": "texts",
          "label_type": str, "cache_dir": "path", "skip_damaged_cache_records": bool,
          "name": str, "dataset": str, "leads": "texts", "label_fractions": "numbers",
          "train_source": str, "test_source": str}
_KIND_TEXT = {str: "a string", "path": "a path", dict: "a mapping {key: value}",
              bool: "True or False", "texts": "a list of strings",
              "numbers": "a list of numbers"}


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the table: a task at one lead set and label fraction."""
    name: str
    task: str
    dataset: str
    leads: str
    label_fraction: float
    train_source: str
    test_source: str


def _fields(entry, defaults: dict, where: str) -> dict:
    entry = entry.to_dict() if hasattr(entry, "to_dict") else entry
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {entry!r}: expected a mapping of its fields "
                         f"{sorted(set(defaults) | {'name', 'dataset'})}")
    unknown = sorted(set(entry) - set(defaults) - {"name", "dataset"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected "
                         f"{sorted(set(defaults) | {'name', 'dataset'})}")
    for field, value in entry.items():
        _check_kind(value, _KINDS.get(field), f"{where}.{field}")
    return {**defaults, **entry}


def _check_kind(value, kind, where: str) -> None:
    if kind is None:
        return
    if kind in ("texts", "numbers"):
        each = str if kind == "texts" else (int, float)
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, each) and not isinstance(v, bool) for v in value)
    elif kind == "path":
        ok = isinstance(value, (str, os.PathLike))
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{where}={value!r}: expected {_KIND_TEXT[kind]}")
    if kind in ("texts", "numbers") and len(set(value)) != len(value):
        raise ValueError(f"{where}={list(value)!r}: a value is listed twice; expected distinct "
                         "values")


def _section(config: dict, key: str, kind: type, path) -> None:
    value = config.get(key)
    if not value:
        raise ValueError(f"task file {path}: `{key}` is missing or empty")
    if not isinstance(value, kind):
        raise ValueError(f"task file {path}: `{key}` is a {type(value).__name__}; expected "
                         + ("a mapping {name: {fields}}" if kind is dict else
                            "a list of tasks, each a mapping {name, dataset, ...}"))


def load_suite(path, roots: dict | None = None) -> dict:
    """The task file as plain dicts, defaults filled in and checked; `roots` ({dataset: folder})
    replaces datasets' roots (the data lives where the user downloaded it). A file that does not
    load is one line naming the flag, as a --config file's is; it is loaded once (the CLI had
    loaded it too, running its get_config() twice)."""
    try:
        config = config_lib.load_config_file(path).to_dict()
    except ValueError as err:   # "config file F: no such file" had named no flag
        raise ValueError(f"--tasks: {err}") from None
    known = {"datasets", "tasks", "protocols", *SUITE_DEFAULTS}
    unknown = sorted(set(config) - known)
    if unknown:  # a typo (boostrap = 200) had been ignored
        raise ValueError(f"task file {path}: unknown field(s) {unknown}; expected "
                         f"{sorted(known)}")
    for key, kind in (("datasets", dict), ("tasks", (list, tuple)), ("protocols", dict)):
        _section(config, key, kind, path)
    datasets = {name: _fields(entry, DATASET_DEFAULTS, f"task file {path}: datasets[{name!r}]")
                for name, entry in config["datasets"].items()}
    for name, entry in datasets.items():
        where = f"task file {path}: datasets[{name!r}]."
        ranges.check(entry, ranges.DATASET, where)  # "three" folds was an int() traceback line
        if entry["label_type"] not in LABEL_TYPES:
            raise ValueError(f"{where}label_type={entry['label_type']!r}: expected one of "
                             f"{list(LABEL_TYPES)}")
        fractions = entry["split_fractions"]
        if fractions and not ranges.split_fractions_ok(fractions):
            raise ValueError(f"{where}split_fractions={fractions!r}: "
                             f"{ranges.SPLIT_FRACTIONS_TEXT}")
    for name, root in (roots or {}).items():
        if name not in datasets:
            raise ValueError(f"--roots: {name!r} is not a dataset of {path} "
                             f"({sorted(datasets)})")
        datasets[name]["root"] = root
    tasks = _tasks(config["tasks"], datasets, path)
    protocols_given = _protocols(config["protocols"], path)
    suite = {key: config.get(key, default) for key, default in SUITE_DEFAULTS.items()}
    ranges.check(suite, ranges.SUITE, f"task file {path}: ")
    # "protocols": each recipe as the file gives it (a cell's digest holds it); "recipes": each
    # with its defaults filled in and checked, here, before any model loads (a bad optimizer had
    # surfaced after the feature extraction as a flag the benchmark has not got).
    out = {**suite, "datasets": datasets, "tasks": tasks, "protocols": protocols_given,
           "recipes": {name: recipe(given, name, path) for name, given in
                       protocols_given.items()}}
    names = [c.name for c in columns(out)]
    shared = sorted({n for n in names if names.count(n) > 1})
    if shared:
        raise ValueError(f"task file {path}: two tasks (or a task's lead sets and label "
                         f"fractions) give the same column {shared[0]!r}; rename one")
    return out


def _tasks(entries, datasets: dict, path) -> list[dict]:
    """The task file's tasks, defaults filled in and checked against its `datasets`."""
    tasks = [_fields(task, TASK_DEFAULTS, f"task file {path}: tasks[{i}]")
             for i, task in enumerate(entries)]
    for i, task in enumerate(tasks):
        if task.get("dataset") not in datasets or not task.get("name"):
            raise ValueError(f"task file {path}: tasks[{i}] needs a name and a dataset of "
                             f"{sorted(datasets)}")
        if not str(datasets[task["dataset"]]["root"] or "").strip():  # "" is the working dir
            raise ValueError(f"task file {path}: datasets[{task['dataset']!r}] has no root; give "
                             f"one in the file or --roots={task['dataset']}=FOLDER")
        if bool(task["train_source"]) != bool(task["test_source"]):
            raise ValueError(f"task file {path}: task {task['name']!r} gives train_source and "
                             "test_source together (a cross-domain pair) or neither")
        if task["train_source"] and task["train_source"] == task["test_source"]:
            raise ValueError(f"task file {path}: task {task['name']!r}: train_source and "
                             f"test_source are both {task['train_source']!r}; the test source's "
                             "every record is tested, the training ones too: a cross-domain "
                             "pair needs two sources (leave both out for in-domain figures)")
        data = datasets[task["dataset"]]
        if data["folds"] and data["split_fractions"] and not task["train_source"] and not any(
                t["dataset"] == task["dataset"] and t["train_source"] for t in tasks):
            raise ValueError(f"task file {path}: datasets[{task['dataset']!r}] gives folds and "
                             "split_fractions, and no cross-domain task reads its splits: the "
                             "folds replace them; give one of the two")
        lead_sets = [protocols.lead_set(leads, f"task file {path}: task {task['name']!r}: "
                                            f"leads entry {leads!r}") for leads in task["leads"]]
        if not lead_sets or len(set(lead_sets)) != len(lead_sets):
            raise ValueError(f"task file {path}: tasks[{i}].leads={task['leads']!r}: expected "
                             "distinct lead sets")
        if not task["label_fractions"]:
            raise ValueError(f"task file {path}: tasks[{i}].label_fractions=[]: expected at "
                             "least one fraction")
    for name, task in zip([t["name"] for t in tasks], tasks):
        if not all(ranges.FRACTION_OF_LABELS.ok(f) for f in task["label_fractions"]):
            raise ValueError(f"task file {path}: tasks {name!r}: label_fractions="
                             f"{task['label_fractions']}: each {ranges.FRACTION_OF_LABELS.text}")
    return tasks


def _protocols(given: dict, path) -> dict:
    """The task file's protocols, in PROTOCOLS order, each as the file gives it."""
    unknown = sorted(set(given) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"task file {path}: protocols {unknown}: expected some of {PROTOCOLS}")
    for name, fields in given.items():
        if fields is not None and not isinstance(fields, dict):
            raise ValueError(f"task file {path}: protocols[{name!r}]={fields!r}: expected a "
                             "mapping of its recipe's fields ({} for the defaults)")
    return {name: given[name] for name in PROTOCOLS if name in given}


PROTOCOL_DEFAULTS = {"probe": ranges.PROBE_DEFAULTS, "mlp": ranges.MLP_DEFAULTS,
                     "finetune": ranges.FINETUNE_DEFAULTS}
RANGES = {"probe": ranges.PROBE, "mlp": ranges.MLP, "finetune": ranges.FINETUNE}


def recipe(given: dict | None, protocol: str, path) -> dict:
    """Protocol `protocol`'s recipe as task file `path` gives it (None: the defaults), its
    defaults filled in and every field checked; each error names the file and the field."""
    given = dict(given or {})
    where = f"task file {path}: protocols[{protocol!r}]"
    unknown = sorted(set(given) - set(PROTOCOL_DEFAULTS[protocol]))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected "
                         f"{sorted(PROTOCOL_DEFAULTS[protocol])}")
    out = {**PROTOCOL_DEFAULTS[protocol], **given}
    # Range.ok lets None through (a setting left to the data path's recipe): only the fields
    # whose default is None may be; a null epochs had been a TypeError traceback (int(None)).
    for name, valid in RANGES[protocol].items():
        if out.get(name, 0) is None and PROTOCOL_DEFAULTS[protocol][name] is not None:
            raise ValueError(f"{where}.{name}=None: {valid.text}")
    ranges.check(out, RANGES[protocol], f"{where}.")
    problem = (ranges.finetune_steps_problem(out, f"protocols[{protocol!r}].")
               if protocol == "finetune" else None)
    if problem:  # 3e9 steps: an OverflowError traceback in the first cell
        raise ValueError(f"task file {path}: {problem}")
    if "l2_grid" in out:
        grid = list(out["l2_grid"] or [])
        if not grid or not all(ranges.L2.ok(v) for v in grid):
            raise ValueError(f"{where}.l2_grid={out['l2_grid']!r}: expected strengths, each "
                             f"{ranges.L2.expected}")
        out["l2_grid"] = tuple(float(v) for v in grid)
    if "optimizer" in out and out["optimizer"] not in ranges.PROBE_OPTIMIZERS:
        raise ValueError(f"{where}.optimizer={out['optimizer']!r}: expected one of "
                         f"{list(ranges.PROBE_OPTIMIZERS)}")
    if "augment" in out:   # a string had been read letter by letter
        problem = ranges.augment_names_problem(out["augment"])
        if problem:
            raise ValueError(f"{where}.augment={out['augment']!r}: {problem}")
        out["augment"] = list(out["augment"])
    return out


def columns(suite: dict) -> list[Column]:
    """Every task expanded over its lead sets and label fractions (distinct: load_suite)."""
    out = []
    for task in suite["tasks"]:
        several = len(task["leads"]) * len(task["label_fractions"]) > 1
        for leads in task["leads"]:
            for fraction in task["label_fractions"]:
                name = task["name"] + (f" leads={leads} labels={float(fraction):g}" if several
                                       else "")
                out.append(Column(name, task["name"], task["dataset"], str(leads),
                                  float(fraction), task["train_source"], task["test_source"]))
    return out


def dataset_settings(suite: dict, name: str) -> dict:
    """The settings datasets.load_dataset and the protocol runs read, for one dataset."""
    entry = suite["datasets"][name]
    return {**entry, "label_set": entry["layout_options"].get("label_set", ""),
            "seed": suite["seed"], "bootstrap": suite["bootstrap"],
            "batch_size": suite["batch_size"], "num_workers": suite["num_workers"],
            "preset": "", "cross_domain": False, "lead_sets": ["12"],
            "label_fractions": [1.0], "flag_prefix": f"the task file's datasets[{name!r}]."}



# The version of the evaluation rules a cell's figures follow, part of every cell spec: bump
# it when a rule changes what a finished cell would hold, so a resumed benchmark recomputes
# its cells rather than ranking old ones beside new. Features (feature_store, keyed by their
# records, lead set and weights) do not follow these rules and are reused.
# 2: cross-domain cells leave out test records of patients that trained or selected the head,
#    a class is learnt only with a training negative, patient-grouped splits across sources.
# 3: a cell's fields say what its label fraction used (n_labelled, n_train_pool,
#    label_fraction_used: protocols.labels_used).
# 4: label_type auto is decided from the classes a task lists (datasets.decide_label_type), not
#    the whole vocabulary: a task may change label type over the same records and labels.
EVALUATION_RULES = 4


def cell_spec(model: benchmark_models.Model, column: Column, protocol: str, suite: dict,
              dataset_digest: str = "") -> str:
    """A digest of everything a cell's predictions depend on: a finished cell is reused only
    when it matches (other weights, at the same path or another, recipe, dataset settings
    or, by `dataset_digest` (benchmark_datasets.Datasets.fingerprint), the dataset's records,
    labels and decided label type recompute it), and the EVALUATION_RULES a finished cell was
    computed under."""
    text = json.dumps({"rules": EVALUATION_RULES, "model": model.filed_as,
                       "column": dataclasses.asdict(column),
                       "dataset": suite["datasets"][column.dataset],
                       "dataset_digest": dataset_digest, "protocol": protocol,
                       "recipe": suite["protocols"][protocol], "seed": suite["seed"],
                       "batch_size": suite["batch_size"]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
