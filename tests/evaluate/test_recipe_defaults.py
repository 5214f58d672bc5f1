"""The recipes' defaults are written once (evaluate/ranges.py): the probe and finetune commands'
flags and the benchmark task file's protocols give the same values, the ones
docs/evaluation.md lists. They had been written three times (the flags, the task file's
defaults, the heads' keywords)."""
import ast
import pathlib
import re

import pytest

from crema_jax.cli import evaluation_flags, finetune, probe
from crema_jax.evaluate import benchmark_tasks, linear_probe, mlp_head

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"
REQUIRED = ["--checkpoint=random", "--workdir=w"]


def _documented(protocol: str) -> dict:
    """The `field=value` items of the protocol's row of the defaults table."""
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith(f"| `{protocol}` | `") and "=" in line.split("|")[2]]
    assert len(rows) == 1, rows
    return {name: ast.literal_eval(value)
            for name, value in re.findall(r"`(\w+)=([^`]+)`", rows[0])}


def _plain(recipe: dict) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in recipe.items()}


@pytest.mark.parametrize("protocol", ["probe", "mlp", "finetune"])
def test_a_task_files_defaults_are_the_documented_ones(protocol):
    got = benchmark_tasks.recipe(None, protocol, "t.py")
    assert _plain(got) == _documented(protocol)


def test_the_commands_flags_default_to_the_task_files_recipes():
    head = evaluation_flags.probe_head(probe.COMMAND.parse(REQUIRED))
    assert _plain(head) == _plain(benchmark_tasks.recipe({}, "probe", "t.py"))
    ft = evaluation_flags.finetune_recipe(finetune.COMMAND.parse(REQUIRED))
    assert _plain(ft) == _plain(benchmark_tasks.recipe({}, "finetune", "t.py"))
    assert _plain(ft) == _documented("finetune")


def test_the_heads_keywords_default_to_the_same_values():
    import inspect

    for fit, protocol in ((linear_probe.fit_linear_probe, "probe"),
                          (mlp_head.fit_mlp_head, "mlp")):
        keywords = inspect.signature(fit).parameters
        documented = _documented(protocol)
        assert {k: _plain({k: keywords[k].default})[k] for k in documented} == documented
