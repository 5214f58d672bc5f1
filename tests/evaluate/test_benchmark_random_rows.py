"""benchmark: the random-init row the benchmark adds per architecture was named after the first
model of that architecture (`random:b`), and that name was in its cells' digest and in its
feature folder: a model added at the front of --models (`a`, of b's architecture) renamed it
`random:a` and recomputed its every cell and feature. It is shown as `random:FAMILY`, and every
model is filed under its weights (a random init's: its architecture and seed), whatever the order
or the names of --models."""
import json

import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax.data.index import dataset_index
from crema_jax.evaluate import benchmark, benchmark_models
from crema_jax.inference import backbones
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint

ONE_TASK = f"""import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.datasets = {{"d": {{"root": {str(dataset_index.sample_data_dir())!r}, "folds": 3,
                        "min_positives": 5, "label_type": "multilabel"}}}}
    c.tasks = [{{"name": "t", "dataset": "d"}}]
    c.protocols = {{"probe": {{"steps": 5}}}}
    c.bootstrap = 20
    return c
"""


def _saved_cells(workdir) -> list[dict]:
    out = []
    for path in sorted((workdir / "cells").rglob("*.npz")):
        with np.load(path, allow_pickle=False) as saved:
            out.append(json.loads(str(saved["meta"])))
    return out


def test_a_model_added_in_front_or_renamed_reuses_the_cells(tmp_path):
    """Cells are filed under the weights, never under a name: a model added in front (here of
    the same weights as b), or b renamed, reuses every cell and is shown under its new name
    (cells had been filed under the --models name: a renamed model recomputed them all)."""
    config = config_lib.default_config()
    config.model.size = "tiny"
    sit = tmp_path / "sit"
    checkpoint.save_model_checkpoint(sit, params_lib.init_params(config.model, 1), config)
    tasks = tmp_path / "tasks.py"
    tasks.write_text(ONE_TASK)
    workdir = tmp_path / "bench"
    first = benchmark.run_benchmark([f"b={sit}"], str(tasks), str(workdir))
    assert [m["name"] for m in first["models"]] == ["b", "random:sit"]
    assert first["counts"]["cells_computed"] == 2
    again = benchmark.run_benchmark([f"a={sit}", f"b={sit}"], str(tasks), str(workdir))
    rows = {m["name"]: m["random_row"] for m in again["models"]}
    assert rows == {"a": "random:sit", "b": "random:sit", "random:sit": "random:sit"}
    # a is b's weights: its cell and features are b's, and the random row's are the first run's.
    assert {k: again["counts"][k] for k in ("cells_computed", "cells_reused",
                                            "feature_extractions", "features_reused")} == {
        "cells_computed": 0, "cells_reused": 3, "feature_extractions": 0, "features_reused": 0}
    same = ("b and a are the same model (equal weights, architecture and data path): b's "
            "figures are a's, and every difference between the two is 0, which says nothing of "
            "either")
    assert [m["same_model"] for m in again["models"]] == [None, same, None]
    md = (workdir / "leaderboard.md").read_text()
    assert f"\n\nNote: {same}.\n\n" in md
    assert f"\n- random:sit: sit\\_pretrain, random (the random init, seed 0, of {TINY})\n" in md
    renamed = benchmark.run_benchmark([f"renamed={sit}"], str(tasks), str(workdir))
    assert [m["name"] for m in renamed["models"]] == ["renamed", "random:sit"]
    assert renamed["counts"]["cells_reused"] == 2 and renamed["counts"]["cells_computed"] == 0
    scores = [{(s["model"], s["column"], s["protocol"]): s["macro_auroc"] for s in board["cells"]}
              for board in (first, again, renamed)]
    assert scores[1][("random:sit", "t", "probe")] == scores[0][("random:sit", "t", "probe")]
    assert scores[1][("a", "t", "probe")] == scores[2][("renamed", "t", "probe")] == \
        scores[0][("b", "t", "probe")]
    # The saved cells name no model: each its weights (filed_as), its fields no name either.
    filed = {m["name"]: m["filed_as"] for m in first["models"]}
    assert filed["b"].startswith("weights:") and filed["random:sit"].startswith("random:")
    metas = _saved_cells(workdir)
    assert sorted(m["model"] for m in metas) == sorted(filed.values())
    assert all("model" not in m["fields"] for m in metas)


TINY = "SiT tiny: width 64, depth 2, 2 heads, with decoder; data path crema"
SMALL = "SiT small: width 384, depth 12, 6 heads, with decoder; data path crema"


@pytest.fixture
def sizes(monkeypatch):
    """`--models` entries x=tiny, y=small: the default config at those sizes, all weights one;
    `random` the tiny one, randomly initialised."""
    configs = {}
    for size in ("tiny", "small"):
        configs[size] = config_lib.default_config()
        configs[size].model.size = size
    monkeypatch.setattr(
        benchmark_models.backbones, "load_config_and_params",
        lambda path, **_: (configs["tiny"], None) if path == "random" else (
            configs[path], {"w": np.ones(2, np.float32)}))
    return configs


def test_added_random_rows_of_one_family_are_told_apart_by_their_architecture(sizes):
    """Two SiT sizes: two added rows, random:sit-DIGEST each, DIGEST 8 hex digits of the
    architecture (its model config and data path); the same names in either order, each said
    to be the random init of its architecture (it had been "of x's architecture", x the first
    model given of it)."""
    def added(items):
        return {m.name: m.random_of for m in benchmark_models.load_models(items, seed=0)
                if m.random_of}
    one = added(["x=tiny", "y=small"])
    digests = {k: backbones.architecture(c)[:8] for k, c in sizes.items()}
    assert one == {f"random:sit-{digests['tiny']}": TINY, f"random:sit-{digests['small']}": SMALL}
    assert added(["y=small", "x=tiny"]) == one
    assert added(["x=tiny"]) == added(["z=tiny", "x=tiny"]) == {"random:sit": TINY}


def test_two_entries_of_one_model_are_said_to_be_one(sizes):
    """Two names for the same weights (or one random init twice) had been compared as two
    models, "no detectable difference" reading as a finding."""
    def notes(items):
        return benchmark_models.same_models(benchmark_models.load_models(items, seed=3), seed=3)
    assert notes(["x=tiny", "y=small"]) == notes(["r=random", "x=tiny"]) == {}
    assert notes(["x=tiny", "y=small", "z=tiny"]) == {
        "z": "z and x are the same model (equal weights, architecture and data path): z's "
             "figures are x's, and every difference between the two is 0, which says nothing "
             "of either"}
    assert notes(["r=random", "s=random"]) == {
        "s": "s and r are the same random init (seed 3, one architecture and data path): s's "
             "figures are r's, and every difference between the two is 0, which says nothing "
             "of either"}
