"""Evaluators during pretraining: logged with their step, their numbers against independent
references (scikit-learn's AUROC, the baselines' definitions), continued after a kill -9, and a
profiler trace of the configured steps."""
import json
import signal

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.data.index import dataset_index
from crema_jax.data.index import registry
from crema_jax.evaluate import evaluators
from crema_jax.train import trainer
from tests.configs import tiny_config
from tests.train.helpers import start_cli


def _bundled(**overrides):
    """The tiny model on the bundled real records, both evaluators every 2 steps."""
    config = tiny_config(**overrides)
    config.data.synthetic_records = 0
    config.data.root = str(dataset_index.sample_data_dir())
    config.data.layout_options = {"val_fraction": 0.15, "test_fraction": 0.25}
    config.evals.names = ("reconstruction", "fewshot_probe")
    config.evals.every_steps = 2
    config.evals.reconstruction.num_records = 4
    config.evals.fewshot_probe.min_positives = 1
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("evals")
    config = _bundled(**{"train.num_steps": 5})
    result = trainer.train(config, workdir, devices=jax.devices()[:1],
                           evaluators=evaluators.build)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return config, result, rows


def test_evaluator_rows_appear_at_the_configured_steps(run):
    _, result, rows = run
    steps = [r["step"] for r in rows if "eval/recon_mse" in r]
    assert steps == [2, 4, 5]  # every 2 steps and the last
    assert sorted(result["evals"]) == [2, 4, 5]
    for row in rows:
        if "eval/recon_mse" in row:
            assert np.isfinite(row["eval/fewshot_macro_auroc"])
            assert row["eval/recon_mse_over_zero"] == pytest.approx(
                row["eval/recon_mse"] / row["eval/recon_mse_zero"], rel=1e-12)


def test_fewshot_auroc_equals_scikit_learns(run):
    _, result, rows = run
    probe = [e for e in result["evaluators"] if e.name == "fewshot_probe"][0]
    labels, probs = probe.last["labels"], probe.last["probabilities"]
    scorable = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
    assert scorable
    expected = np.mean([roc_auc_score(labels[:, c], probs[:, c]) for c in scorable])
    assert abs(rows[-1]["eval/fewshot_macro_auroc"] - expected) < 1e-6


def test_reconstruction_figure_is_the_masked_mse_of_the_held_back_records(run):
    config, result, rows = run
    recon = [e for e in result["evaluators"] if e.name == "reconstruction"][0]
    batch, pred = recon.batch, recon.last
    assert len(recon.paths) == 4
    test_ids = {i.path for i in registry.build_index(
        "wfdb_folder", config.data.root, **dict(config.data.layout_options)).records
        if i.split == "test"}
    assert set(recon.paths) <= test_ids
    hidden = np.asarray(batch["mask"]) & np.asarray(batch["patch_valid"])
    target = (np.asarray(batch["patches"], np.float64) - np.asarray(
        batch["patches"], np.float64).mean(-1, keepdims=True)) / np.sqrt(np.asarray(
            batch["patches"], np.float64).var(-1, ddof=1, keepdims=True) + 1e-6)  # norm_pix
    expected = np.mean(((pred - target) ** 2).mean(-1)[hidden])
    assert abs(rows[-1]["eval/recon_mse"] - expected) < 1e-6 * expected
    assert 0.0 <= rows[-1]["eval/contrastive_accuracy"] <= 1.0


def test_view_matching_accuracy_counts_records_that_find_their_own_view():
    proj = np.array([[[1, 0], [1, 0.1]], [[0, 1], [1, 0.05]], [[-1, 0], [-1, 0]]], float)
    # records 0 and 1 are each closer to the other's view 1 than to their own: 1 of 3 matched
    z = proj / np.linalg.norm(proj, axis=-1, keepdims=True)
    expected = np.mean([np.argmax([z[i, 0] @ z[j, 1] for j in range(3)]) == i for i in range(3)])
    assert evaluators.view_matching_accuracy(proj) == expected == 1 / 3


def test_evals_without_evaluators_are_refused(tmp_path):
    with pytest.raises(ValueError, match="evaluators=crema_jax.evaluate.evaluators.build"):
        trainer.train(_bundled(), tmp_path / "w", devices=jax.devices()[:1])


def test_a_profile_trace_is_written_for_the_configured_steps(tmp_path, capsys):
    workdir = tmp_path / "run"
    trainer.train(tiny_config(**{"train.num_steps": 4, "train.profile_steps": "1:3"}), workdir,
                  devices=jax.devices()[:1])
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
    assert "profile of steps 2-3 written" in capsys.readouterr().out


def _eval_rows(workdir) -> dict:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/recon_mse" in row:
            out.setdefault(row["step"], []).append(row["eval/recon_mse"])
    return out


@pytest.mark.slow
def test_evaluations_continue_after_kill_minus_9(tmp_path, jax_cache_dir):
    evals = ("--config.evals.names=('reconstruction',)", "--config.evals.every_steps=2",
             "--config.evals.reconstruction.split=", "--config.train.num_steps=6",
             "--config.checkpoint.every_steps=2")
    clean = tmp_path / "clean"
    proc = start_cli(clean, *evals, cache_dir=jax_cache_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    work = tmp_path / "drill"
    proc = start_cli(work, *evals, step_delay_seconds=1.0,
                     cache_dir=jax_cache_dir)
    import time
    deadline = time.time() + 600
    while (workdir_lib.latest_step(work / "checkpoints") or 0) < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = start_cli(work, *evals, cache_dir=jax_cache_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "resumed from step" in out, out
    drill, reference = _eval_rows(work), _eval_rows(clean)
    assert sorted(reference) == [2, 4, 6] and sorted(drill) == [2, 4, 6]
    for step, values in drill.items():  # a step evaluated twice (before and after the kill)
        np.testing.assert_allclose(values, reference[step] * len(values), rtol=1e-5)


def _fixed_outputs(batch_size, views):
    """A stand-in for the trainer's "reconstruct" prediction: zero reconstructions and fixed
    projections, whatever the state."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(batch_size, views, 8))

    def reconstruct(state, batch):
        return {"pred": np.zeros(batch["patches"].shape, np.float32), "proj": proj}
    return reconstruct, proj


@pytest.mark.parametrize("loss, decoder, projector", [
    ("infonce", False, True), ("mae", True, False), ("crema", True, True)])
def test_reconstruction_reports_only_the_parts_the_loss_trains(loss, decoder, projector):
    config = _bundled(**{"loss.name": loss})
    config.data.num_views = 2
    config.evals.reconstruction.num_records = 4
    reconstruct, proj = _fixed_outputs(4, 2)
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    evaluator = evaluators.Reconstruction(config, mesh, {"reconstruct": reconstruct})
    row = evaluator.run(None)
    line = evaluator.summary(row)
    recon_keys = [k for k in row if k.startswith("eval/recon_mse")]
    assert bool(recon_keys) is decoder and ("masked MSE" in line) is decoder
    assert (f"no reconstruction MSE: loss {loss!r} trains no decoder" in line) is not decoder
    if decoder:  # a zero prediction is the zero baseline: their ratio is exactly 1
        assert row["eval/recon_mse"] == row["eval/recon_mse_zero"]
    assert ("eval/contrastive_accuracy" in row) is projector
    assert (f"no view matching: loss {loss!r} trains no projector" in line) is not projector
    if projector:  # view 0 of record i against view 1 of every record, by cosine similarity
        z = proj / np.linalg.norm(proj, axis=-1, keepdims=True)
        expected = np.mean([np.argmax(z[i, 0] @ z[:, 1].T) == i for i in range(4)])
        assert row["eval/contrastive_accuracy"] == expected


def test_a_resumed_run_already_at_num_steps_says_there_is_nothing_to_train(tmp_path, capsys):
    """Resuming a run at step 4 with num_steps=2 compiled the step and ended with exit 0 and
    no word; it now says so, compiles nothing and returns the restored state unchanged."""
    workdir = tmp_path / "run"
    first = trainer.train(tiny_config(**{"train.num_steps": 4}), workdir,
                          devices=jax.devices()[:1])
    capsys.readouterr()
    again = trainer.train(tiny_config(**{"train.num_steps": 2}), workdir,
                          devices=jax.devices()[:1])
    out = capsys.readouterr().out
    assert f"step 4 of {workdir} is at or past config.train.num_steps=2: nothing to train" in out
    assert "compiled train step" not in out
    assert again["last_step"] == 4 and again["losses"] == {}
    a, b = (jax.tree.leaves(state) for state in (first["state"], again["state"]))
    assert len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(a, b))
