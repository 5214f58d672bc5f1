"""The command line: `crema-jax COMMAND --help` lists that command's flags and nothing else, errors
are one line, and the package keeps its layers (no flags outside cli/, evaluate and export
never reach train/)."""
import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

from crema_jax.cli import command

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "crema_jax"
CLI = [sys.executable, "-m", "crema_jax.main"]

# Flags each command must list, chosen so that no other command has them: every command's
# --help must show its own and none of the others' (nor those in ABSENT).
OWN_FLAGS = {
    "preview": ["--mask_ratio", "--record"],
    "prepare": ["--records_per_shard", "--workers", "--stop_after_shards", "--strict"],
    "pretrain": ["--config", "--dry_run", "--topology", "--coordinator_address"],
    "probe": [],
    "finetune": [],
    "compare": ["--checkpoint_b", "--backbone_b", "--alpha", "--method", "--init_seed_b"],
    "embed": ["--input", "--raw", "--logits", "--fs"],
    "predict": ["--top", "--model"],
    "export-torch": ["--include_decoder"],
    "import-torch": ["--format"],
}
EVALUATION = ["--checkpoint", "--label_fractions", "--lead_sets", "--cross_domain", "--folds",
              "--root", "--layout", "--workdir", "--seed", "--skip_damaged_cache_records",
              "--patients_across_splits"]
PROBE_HEAD = ["--l2_grid", "--probe_optimizer", "--probe_steps"]
FINETUNE_RECIPE = ["--epochs", "--layer_decay", "--patience"]
# Shared by design (evaluation commands take a checkpoint), listed where they belong.
SHARED = {"probe": EVALUATION + PROBE_HEAD, "finetune": EVALUATION + FINETUNE_RECIPE,
          "compare": EVALUATION + PROBE_HEAD + FINETUNE_RECIPE,
          "embed": ["--checkpoint", "--out"], "predict": ["--checkpoint", "--out"],
          "export-torch": ["--checkpoint", "--out", "--layout"], "import-torch": ["--out"],
          "prepare": ["--root", "--out", "--layout"], "pretrain": ["--workdir"],
          "preview": ["--out", "--seed"]}
ABSENT = {"probe": FINETUNE_RECIPE, "finetune": PROBE_HEAD}


def _run(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def _flags_in(text):
    return {word.split("=")[0].replace("--[no]", "--") for line in text.splitlines()
            for word in line.split() if word.startswith("--")}


@pytest.mark.parametrize("name", sorted(OWN_FLAGS))
def test_help_lists_the_commands_own_flags_and_no_others(name):
    done = _run(name, "--help")
    assert done.returncode == 0, done.stderr
    listed = _flags_in(done.stdout)
    for flag in OWN_FLAGS[name] + SHARED[name]:
        assert flag in listed, (name, flag, done.stdout)
    foreign = {f for other, flags in OWN_FLAGS.items() if other != name for f in flags}
    foreign |= set(ABSENT.get(name, []))
    assert not listed & foreign, (name, listed & foreign)
    # Not absl's or JAX's global flags either, and every flag has help text and a default.
    assert "--verbosity" not in listed and "jax_" not in done.stdout and "--helpfull" not in listed
    assert done.stdout.startswith(f"usage: crema-jax {name} ")


def test_top_level_help_lists_every_command():
    done = _run("--help")
    assert done.returncode == 0
    for name in OWN_FLAGS:
        assert f"  {name} " in done.stdout


@pytest.mark.slow
def test_bad_flags_end_in_one_line():
    for args, fragment in ((("probe", "--nonexistent=1"), "Unknown command line flag"),
                           (("probe", "--workdir=/tmp/x"), "--checkpoint"),
                           (("embed", "--checkpoint=/nonexistent", "--input=x.npy",
                             "--out=y.npy"), "/nonexistent"),
                           (("import-torch", "--format=stmem", "--out=/tmp/x"),
                            "expected one weight FILE"),
                           # memory:// output: exit 0 and nothing kept, until refused
                           (("prepare", "--layout=wfdb_folder", "--root=/tmp",
                             "--out=memory://cache"), "--out=memory://cache: memory:// lives"),
                           (("predict", "--checkpoint=/tmp/x", "memory://a.hea"),
                            "memory://a.hea: memory:// lives"),
                           (("prepare", "--layout=wfdb_folder", "--root=file://host/x",
                             "--out=/tmp/y"), "file:// URL on host 'host'")):
        done = _run(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode in (1, 2), (args, done.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"crema-jax {args[0]}: error: "), lines
        assert fragment in lines[0], lines


def test_key_value_options_are_typed():
    assert command.parse_key_values(
        ["source=site", "val_fraction=0.2", "sampling_rate=500", "drop_unlabelled=False"],
        flag="layout_option") == {"source": "site", "val_fraction": 0.2, "sampling_rate": 500,
                                  "drop_unlabelled": False}
    with pytest.raises(command.CommandError, match="KEY=VALUE"):
        command.parse_key_values(["site"], flag="layout_option")


def test_file_urls_are_the_local_paths_they_name():
    """file:///tmp/x had become CWD/file:/tmp/x."""
    from crema_jax.cli import embed, predict
    args = embed.COMMAND.parse(["--checkpoint=file:///tmp/run%20a", "--input=x.npy",
                                "--out=file://localhost/tmp/y.npy"])
    assert (args.checkpoint, args.input, args.out) == ("/tmp/run a", "x.npy", "/tmp/y.npy")
    args = predict.COMMAND.parse(["--checkpoint=c", "file:///data/a.hea", "b.hea"])
    assert args.positional == ["/data/a.hea", "b.hea"]
    assert embed.COMMAND.parse(["--checkpoint=file:///", "--input=x", "--out=y"]).checkpoint \
        == "/"


@pytest.mark.parametrize("url", ["gs://", "s3:///"])
def test_a_url_naming_no_bucket_is_refused(url):
    """--root=gs:// had read as the local folder 'gs:' ('gs: is not a directory')."""
    from absl import flags

    from crema_jax.cli import prepare
    with pytest.raises(flags.Error, match=re.escape(f"--root={url}: the URL names no bucket")):
        prepare.COMMAND.parse(["--layout=wfdb_folder", f"--root={url}", "--out=/tmp/y"])


def test_a_command_parses_twice_in_one_process_without_leaking_values():
    from crema_jax.cli import probe
    first = probe.COMMAND.parse(["--checkpoint=a", "--workdir=w", "--probe_steps=7"])
    second = probe.COMMAND.parse(["--checkpoint=b", "--workdir=w"])
    assert (first.probe_steps, second.probe_steps, second.checkpoint) == (7, 200, "b")


# ----------------------------------------------------------------------------- the layers
def _module_files():
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"): p for p in PACKAGE.rglob("*.py")}


def _imports(path):
    """crema_jax modules a file imports (at any depth of the file: local imports count)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("crema_jax")}


def test_flags_are_defined_only_in_the_cli_package():
    for module, path in _module_files().items():
        if module.startswith("crema_jax.cli") or module == "crema_jax.main":  # the dispatcher
            continue
        text = path.read_text()
        assert "DEFINE_" not in text and "absl import flags" not in text, module


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """`crema-jax probe --help | head -1`: the reader is gone when the help is written; the
    command ends with SIGPIPE's status and prints nothing to stderr."""
    proc = subprocess.Popen([*CLI, "probe", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    proc.stdout.close()  # before the command writes: its write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
