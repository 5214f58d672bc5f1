"""The two snippets of docs/interchange.md ("The export in PyTorch"), run as written in a fresh
interpreter: an `export-torch` file loaded with torch_sit.load_sit gives the features of
`embed --raw` for an array of crops, and the crops of a record cut by the data modules alone
(no JAX imported) give the row `embed` writes for that record."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
from flax import nnx

from crema_jax import config as config_lib
from crema_jax.cli import embed as embed_cli
from crema_jax.cli import export_torch as export_cli
from crema_jax.models import build_model
from crema_jax.runtime import checkpoint as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
HEADING = "### The export in PyTorch"


def doc_snippets() -> list[str]:
    """The ```python blocks of the section under HEADING, in order."""
    text = (REPO / "docs" / "interchange.md").read_text()
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_the_documented_pytorch_snippets_give_embeds_features(tmp_path, cinc_sample_dir,
                                                              monkeypatch):
    config = config_lib.default_config()
    config.model.size = "tiny"
    model = build_model(config.model, rngs=nnx.Rngs(5))
    run = tmp_path / "run"
    ckpt_lib.save_model_checkpoint(run, nnx.to_pure_dict(nnx.state(model)), config, step=0)
    monkeypatch.chdir(tmp_path)  # the snippets name their files relative to the working directory
    export_cli.COMMAND.run([f"--checkpoint={run}", "--out=sit.safetensors"])
    np.save("x.npy", np.random.default_rng(0).standard_normal((3, 12, 2250)).astype(np.float32))
    embed_cli.COMMAND.run([f"--checkpoint={run}", "--input=x.npy", "--out=jax.npy", "--raw"])
    record = str(cinc_sample_dir / "E07500")
    embed_cli.COMMAND.run([f"--checkpoint={run}", f"--input={record}", "--out=rec.npy"])

    raw, from_record = doc_snippets()
    script = "\n".join([raw, "np.save('torch_raw.npy', feats)",
                        from_record.replace("/data/E07500", record),
                        "np.save('torch_rec.npy', feats)",
                        "import sys; print('jax imported:', 'jax' in sys.modules)"])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "jax imported: False" in done.stdout, done.stdout
    want_raw, got_raw = np.load("jax.npy"), np.load("torch_raw.npy")
    assert got_raw.shape == want_raw.shape == (3, 64)
    assert rel_err(got_raw, want_raw) <= 1e-5
    want_rec, got_rec = np.load("rec.npy"), np.load("torch_rec.npy")
    assert want_rec.shape == (1, 64) and got_rec.shape == (64,)
    assert rel_err(got_rec, want_rec[0]) <= 1e-5
    # Different inputs give different features: the comparison above is not trivially met.
    assert rel_err(got_raw[0], got_rec) > 1e-2
