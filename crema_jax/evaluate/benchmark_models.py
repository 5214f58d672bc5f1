"""The models a benchmark runs: its --models entries resolved, the random rows added, each model
described and filed.

Models: `NAME=CHECKPOINT` pairs; CHECKPOINT a checkpoint (ours, or imported ST-MEM/ECGFounder),
`random` (a SiT of the default size) or `random:FAMILY` (sit, net1d). The random init of every
architecture in the table is always a row: one row is added per architecture (model config and
data path) that has no random row yet, shown as `random:FAMILY` (`random:FAMILY-DIGEST`, 8 hex
digits of the architecture, when two added rows are of one family) and described by its
architecture (`architecture_text`). Every model is filed (cells, features) under what defines
it, its weights (`Model.filed_as`), never under its name: adding, reordering or renaming models
reuses their cells; two entries of one model are said to be one (`same_models`).
"""
from __future__ import annotations

import dataclasses

from crema_jax.evaluate import texts
from crema_jax.inference import backbones
from crema_jax.models import families


@dataclasses.dataclass
class Model:
    name: str
    checkpoint: str
    config: object
    params: object      # None: random init (seeded)
    random_of: str = ""  # an added random row: its architecture (architecture_text)
    weights: str = ""    # weights_digest: what its predictions are computed from

    @property
    def filed_as(self) -> str:
        """What its cells and features are filed under: `weights:WEIGHTS`, or `random:WEIGHTS`
        for a random init (weights_digest: its architecture, data path and parameters, or
        seed), never its name: they had been filed under the name given on --models (a
        renamed model recomputed its every cell and feature, and the saved cell named it by
        its old name) and an added random row under the first model of its architecture's."""
        return f"{backbones.RANDOM if self.params is None else 'weights'}:{self.weights}"


def parse_models(items) -> list[tuple[str, str]]:
    """["NAME=CHECKPOINT", ...] -> [(name, checkpoint)], names unique."""
    out = []
    for item in items:
        name, sep, checkpoint = item.partition("=")
        if not sep or not name or not checkpoint or "/" in name or name.strip(".") == "":
            raise ValueError(f"--models entry {item!r}: expected NAME=CHECKPOINT (a name "
                             "without '/', then a checkpoint folder, random or random:FAMILY)")
        if name.startswith(backbones.RANDOM + ":"):  # two rows would be shown as one
            raise ValueError(f"--models entry {item!r}: names starting with "
                             f"'{backbones.RANDOM}:' are the random-init rows the benchmark "
                             "adds; choose another name")
        out.append((name, checkpoint))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or not out:
        raise ValueError(f"--models: expected distinct names, got {names}")
    return out


def load_models(items, *, seed: int, model_size: str = "tiny") -> list[Model]:
    """The models named on the command line, then one random row per architecture lacking one
    (random weights drawn with `seed`, the suite's)."""
    models = []
    for name, checkpoint in parse_models(items):
        family = ""
        if checkpoint.startswith(backbones.RANDOM + ":"):
            checkpoint, family = backbones.RANDOM, checkpoint.split(":", 1)[1]
            families.family_named(family, flag=f"--models entry {name!r}: random:FAMILY, FAMILY")
        config, params = backbones.load_config_and_params(checkpoint, backbone=family,
                                                          model_size=model_size)
        models.append(Model(name, checkpoint if not family else f"random:{family}", config,
                            params, weights=backbones.weights_digest(config, params, seed)))
    covered, added = {backbones.architecture(m.config) for m in models if m.params is None}, []
    for model in models:
        key = backbones.architecture(model.config)
        if key not in covered:
            covered.add(key)
            added.append(Model(families.family_of(model.config.model).name, backbones.RANDOM,
                               model.config.copy_and_resolve_references(), None,
                               random_of=architecture_text(model.config),
                               weights=backbones.weights_digest(model.config, None, seed)))
    family_names = [m.name for m in added]
    for model in added:  # named by what it is, not by the order of --models
        model.name = f"{backbones.RANDOM}:{model.name}" + (
            f"-{backbones.architecture(model.config)[:8]}"
            if family_names.count(model.name) > 1 else "")
    return models + added


def architecture_text(config) -> str:
    """An architecture as the leaderboard names it: the family's one clause (Family.describe:
    'SiT tiny: width 64, depth 2, 2 heads, with decoder') and the data path's preset. An added
    random row had been called the random init of the first model of its architecture."""
    return (f"{families.family_of(config.model).describe(config.model)}; data path "
            f"{config.data.get('preset') or 'of its own'}")


def same_models(models: list[Model], seed: int) -> dict:
    """{model name: one line saying it is an earlier model again} for each model whose weights
    (filed_as) an earlier one has: equal parameters, architecture and data path, or one random
    init of one architecture and seed. They share their cells, and every difference between
    them is 0: a comparison of the two is no finding."""
    first, out = {}, {}
    for model in models:
        other = first.setdefault(model.filed_as, model.name)
        if other == model.name:
            continue
        what = texts.same_weights_text(model.params is None, seed)
        out[model.name] = (f"{model.name} and {other} are {what}: {model.name}'s figures are "
                           f"{other}'s, and every difference between the two is 0, which says "
                           "nothing of either")
    return out


def model_random_row(models: list[Model]) -> dict:
    """{model name: the name of the random row of its architecture}."""
    random_by_key = {backbones.architecture(m.config): m.name for m in models
                     if m.params is None}
    return {m.name: random_by_key[backbones.architecture(m.config)] for m in models}
