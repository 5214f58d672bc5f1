"""embed and predict against in-test references: scipy preprocessing written here, PyTorch
reference models, the published label-file hash."""
import csv
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import torch

from crema_jax import config as config_lib
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint
from crema_jax.data.index import dataset_index
from crema_jax.data.reading import wfdb_records
from crema_jax.export import import_torch
from crema_jax.inference import backbones, embed, predict
from tests.data.broken_records import write_damaged
from tests.references.ecgfounder_torch import Net1DRef
from tests.references.stmem_torch import StMemEncoder, randomise_norms

SMALL_NET1D = dict(in_channels=12, filters=(16, 32), blocks=(1, 2), n_classes=150)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def ecgfounder_preprocess(x, fs=500.0):
    """Its released code, step by step from docs/reference/ecgfounder.md ("Its data path
    exactly"): NaN -> 0; iirnotch(50, 30) and butter(4, [0.67, 40]) as (b, a) with filtfilt;
    scipy.signal.medfilt baseline (zero-padded edges); z-score with std + 1e-8."""
    x = np.nan_to_num(np.asarray(x, np.float64))
    b, a = scipy.signal.iirnotch(50.0, 30.0, fs=fs)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    b, a = scipy.signal.butter(N=4, Wn=[0.67, 40], btype="bandpass", fs=fs)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    width = int(0.4 * fs) + 1
    width += 1 - width % 2
    x = x - np.stack([scipy.signal.medfilt(r, width) for r in x])
    return ((x - x.mean()) / (x.std() + 1e-8)).astype(np.float32)


def stmem_crop(x, fs=250.0):
    """ST-MEM's per-crop transforms (docs/reference/stmem.md, its data path step 4): order-5
    high-pass 0.67 Hz, THEN order-5 low-pass 40 Hz (two sosfiltfilt passes), then one z-score
    (ddof 0) over leads and time; std 0 -> zeros."""
    x = np.asarray(x, np.float64)
    for cut, kind in ((0.67, "highpass"), (40.0, "lowpass")):
        x = scipy.signal.sosfiltfilt(scipy.signal.butter(5, cut, kind, fs=fs, output="sos"), x,
                                     axis=-1)
    std = x.std()
    return (np.zeros_like(x) if std == 0 else (x - x.mean()) / std).astype(np.float32)


def stmem_examples(x, fs):
    """ST-MEM's examples of a (12, T) record at fs: non-overlapping 10 s windows, each FFT-
    resampled to int(T * 250 / fs), then 3 crops of 2250 at 0, s, 2s (s = (T - 2250) // 2),
    each through `stmem_crop`. -> list of (3, 12, 30, 75) per window."""
    width = int(10 * fs)
    out = []
    for k in range(x.shape[1] // width):
        w = scipy.signal.resample(np.asarray(x[:, k * width:(k + 1) * width], np.float64),
                                  int(width * 250 / fs), axis=-1)
        s = (w.shape[1] - 2250) // 2
        out.append(np.stack([stmem_crop(w[:, o:o + 2250]).reshape(12, 30, 75)
                             for o in (0, s, 2 * s)]))
    return out


@pytest.fixture(scope="module")
def net1d_ckpt(tmp_path_factory):
    torch.manual_seed(3)
    ref = Net1DRef(**SMALL_NET1D).eval()
    root = tmp_path_factory.mktemp("net1d")
    torch.save({"state_dict": ref.state_dict()}, root / "small.pth")
    import_torch.run_import(str(root / "small.pth"), "ecgfounder", str(root / "ckpt"))
    return ref, str(root / "ckpt")


@pytest.fixture(scope="module")
def sit_ckpt(tmp_path_factory):
    torch.manual_seed(4)
    ref = randomise_norms(StMemEncoder(64, 2, 1), seed=5).eval()
    root = tmp_path_factory.mktemp("sit")
    torch.save({"epoch": 1, "model": ref.state_dict()}, root / "enc.pth")
    import_torch.run_import(str(root / "enc.pth"), "stmem", str(root / "ckpt"))
    return ref, str(root / "ckpt")


def test_label_file_is_ecgfounders():
    with open(predict.LABELS_FILE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "7c087a0d383c7ea9ae9b818ad00a551b029334edfa5f1fbb5036bfbaa0df0c39"
    names = predict.label_names()
    assert len(names) == 150 and names[:2] == ["ABNORMAL ECG", "NORMAL SINUS RHYTHM"]


@pytest.mark.slow
def test_predict_matches_reference_on_real_records(net1d_ckpt, cinc_sample_dir, tmp_path):
    ref, ckpt = net1d_ckpt
    paths = [str(cinc_sample_dir / r) for r in ("E07500", "E07503")]
    signals = [wfdb_records.read_record(p, target_fs=500).signal for p in paths]
    got = predict.predict_probabilities(backbones.load(ckpt, with_head=True),
                                        records=paths)["probs"]
    x = np.stack([ecgfounder_preprocess(s) for s in signals])
    with torch.no_grad():
        want = torch.sigmoid(ref(torch.from_numpy(x))).numpy()
    assert got.shape == (2, 150)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # The CLI end to end: top labels printed, all 150 in the CSV.
    out = tmp_path / "probs.csv"
    result = subprocess.run(
        [sys.executable, "-m", "crema_jax.main", "predict", "--model=ecgfounder",
         f"--checkpoint={ckpt}", paths[0], paths[1], f"--out={out}", "--top=3"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["record", "path"] + predict.label_names() + ["repairs"]
    assert [r[:2] for r in rows[1:]] == [["E07500", paths[0]], ["E07503", paths[1]]]
    np.testing.assert_allclose(np.array(rows[1][2:-1], float), want[0], atol=2e-6)
    assert rows[1][-1] == rows[2][-1] == ""   # nothing repaired in these two
    best = predict.label_names()[int(np.argmax(want[0]))]
    assert f"{want[0].max():.3f}  {best}" in result.stdout


def test_embed_net1d_raw_and_logits(net1d_ckpt):
    ref, ckpt = net1d_ckpt
    backbone = backbones.load(ckpt, with_head=True)
    x = np.random.default_rng(0).standard_normal((3, 12, 601)).astype(np.float32)
    feats = embed.embed(backbone, array=x, raw=True, batch_size=2)["outputs"]
    logits = embed.embed(backbone, array=x, raw=True, logits=True, batch_size=2)["outputs"]
    with torch.no_grad():
        assert rel_err(feats, ref.features(torch.from_numpy(x)).numpy()) <= 1e-5
        assert rel_err(logits, ref(torch.from_numpy(x)).numpy()) <= 1e-5
    with pytest.raises(embed.EmbedError, match=r"takes \(N, 12 leads"):
        embed.embed(backbone, array=x[:, :3], raw=True)
    with pytest.raises(embed.EmbedError, match=r"samples >= 1\), the input has shape "
                                               r"\(3, 12, 0\)"):  # had written NaN rows
        embed.embed(backbone, array=x[:, :, :0], raw=True, logits=True)


def test_embed_sit_raw_and_three_crop_protocol(sit_ckpt):
    ref, ckpt = sit_ckpt
    backbone = backbones.load(ckpt)
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((3, 12, 2250)).astype(np.float32)
    got = embed.embed(backbone, array=raw, raw=True, batch_size=2)["outputs"]
    with torch.no_grad():
        want = ref.features(torch.from_numpy(raw.reshape(3, 12, 30, 75))).numpy()
    assert rel_err(got, want) <= 1e-5

    # An ST-MEM import takes ST-MEM's data path with no flag: 10 s at 500 Hz, FFT to 250 Hz,
    # crops 0/125/250, each filtered and standardised on its own; the crops' features averaged.
    assert backbone.config.data.preset == "stmem"
    ecg = np.cumsum(rng.standard_normal((2, 12, 5000)), axis=-1).astype(np.float32) * 0.01
    got = embed.embed(backbone, array=ecg, fs=500.0, batch_size=2)["outputs"]
    want = []
    for e in ecg:
        (crops,) = stmem_examples(e, 500.0)
        with torch.no_grad():
            want.append(ref.features(torch.from_numpy(crops)).numpy().mean(0))
    assert rel_err(got, np.stack(want)) <= 1e-5

    with pytest.raises(embed.EmbedError, match=r"\(N, 12, 2250\)"):
        embed.embed(backbone, array=raw[:, :, :2000], raw=True)
    with pytest.raises(ValueError, match="no classification head"):
        embed.embed(backbone, array=raw, raw=True, logits=True)


def test_record_lists_globs_and_folders(cinc_sample_dir):
    folder = dataset_index.expand_records(str(cinc_sample_dir))
    assert len(folder) == 50 and folder == sorted(folder)
    assert dataset_index.expand_records(str(cinc_sample_dir / "E0750*.hea")) == folder[:10]
    two = dataset_index.expand_records(f"{cinc_sample_dir}/E07500.hea,{cinc_sample_dir}/E07501")
    assert two == [str(cinc_sample_dir / "E07500"), str(cinc_sample_dir / "E07501")]
    # One record spelt twice is read once (both rows had been named "."), as first spelt.
    once = dataset_index.expand_records(f"{cinc_sample_dir}/E07500,{cinc_sample_dir}/./E07500.hea,"
                                        f"{cinc_sample_dir}/../{cinc_sample_dir.name}/E07500")
    assert once == [str(cinc_sample_dir / "E07500")]


def test_imported_checkpoints_load_as_evaluation_backbones(net1d_ckpt, sit_ckpt):
    """probe/finetune read import-torch output through the backbone registry, which picks the
    family from the checkpoint."""
    sit = backbones.load(sit_ckpt[1])
    net = backbones.load(net1d_ckpt[1])
    assert (sit.name, net.name) == ("sit", "net1d")
    # The widths of the imported tensors: the SiT's, and the Net1D's last stage.
    assert (sit.config.model.width, list(net.config.model.filters)[-1]) == (64, 32)
    with pytest.raises(ValueError, match="holds a 'net1d' model"):
        backbones.load(net1d_ckpt[1], backbone="sit")


def test_one_lead_model_reads_lead_one(cinc_sample_dir, tmp_path):
    torch.manual_seed(8)
    ref = Net1DRef(**{**SMALL_NET1D, "in_channels": 1}).eval()
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "one.pth")
    import_torch.run_import(str(tmp_path / "one.pth"), "ecgfounder", str(tmp_path / "ckpt"))
    signal = wfdb_records.read_record(cinc_sample_dir / "E07501", target_fs=500).signal
    got = predict.predict_probabilities(backbones.load(str(tmp_path / "ckpt"), with_head=True),
                                        records=[str(cinc_sample_dir / "E07501")])["probs"]
    x = ecgfounder_preprocess(signal[:1])[None]
    with torch.no_grad():
        want = torch.sigmoid(ref(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_predict_derives_an_exports_absent_limb_leads_when_asked(net1d_ckpt, tmp_path, capsys):
    """A GE MUSE export stores 8 leads: ECGFounder's own path feeds III, aVR, aVL and aVF as
    zeros (said as leads not in the file). --derive_limb_leads derives them from the stored I
    and II first; the probabilities are then PyTorch's on the 12 leads by Einthoven's and
    Goldberger's formulas (computed by the test's writer from the stored leads)."""
    from crema_jax.cli import predict as predict_cli
    from crema_jax.data import synthetic
    from tests.data import clinical_files
    ref, ckpt = net1d_ckpt
    muse = tmp_path / "exam.xml"
    twelve = clinical_files.write_muse(muse, synthetic.synthetic_ecg(3, seconds=10.0, fs=500.0),
                                       500.0)
    with torch.no_grad():
        x = torch.from_numpy(ecgfounder_preprocess(twelve)[None].astype(np.float32))
        want = torch.sigmoid(ref(x)).numpy()
    backbone = backbones.load(ckpt, with_head=True)
    derived = predict.predict_probabilities(backbone, records=[str(muse)],
                                            derive_limb_leads=True)
    np.testing.assert_allclose(derived["probs"], want, rtol=1e-5, atol=1e-6)
    assert derived["repairs"] == ["limb leads derived (III, aVR, aVL, aVF)"]
    plain = predict.predict_probabilities(backbone, records=[str(muse)])
    assert plain["repairs"] == ["leads not in the file (III, aVR, aVL, aVF)"]
    assert np.max(np.abs(plain["probs"] - want)) > 1e-3   # without it: zeros there, not these
    capsys.readouterr()
    predict_cli.COMMAND.run([f"--checkpoint={ckpt}", str(muse), "--derive_limb_leads",
                             "--top=1"])
    printed = capsys.readouterr().out
    assert ("limb leads absent or held without signal (all NaN, constant) derived from the "
            "others (--derive_limb_leads)") in printed
    assert "exam.xml: (input: limb leads derived (III, aVR, aVL, aVF))" in printed


def _write_record(folder, name, seconds, fs=500.0, seed=0):
    import wfdb

    from crema_jax.data.reading.leads import LEADS
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    x = np.cumsum(rng.normal(size=(n, 12)), 0) * 0.01 + np.sin(
        2 * np.pi * 1.1 * np.arange(n) / fs)[:, None]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(LEADS), p_signal=x,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(folder))
    signal, fields = wfdb.rdsamp(str(folder / name))   # ST-MEM's reader, as the reference
    return str(folder / name), signal[:, [fields["sig_name"].index(n) for n in LEADS]].T


def test_stmem_import_embeds_wfdb_windows_by_its_own_path(sit_ckpt, tmp_path, capsys):
    """import-torch --format=stmem, then embed WFDB files with no flag: ST-MEM's windows, FFT
    resampling and per-crop preprocessing; one row per 10 s window, or their mean."""
    from crema_jax.cli import embed as embed_cli

    ref, ckpt = sit_ckpt
    path, raw = _write_record(tmp_path, "R25", 25.0)
    backbone = backbones.load(ckpt)
    out = embed.embed(backbone, records=[path])
    with torch.no_grad():
        want = np.stack([ref.features(torch.from_numpy(c)).numpy().mean(0)
                         for c in stmem_examples(raw, 500.0)])
    assert out["outputs"].shape == (2, 64) and list(out["window"]) == [0, 1]
    assert rel_err(out["outputs"], want) <= 1e-5
    mean = embed.embed(backbone, records=[path], windows="mean")
    assert rel_err(mean["outputs"], want.mean(0, keepdims=True)) <= 1e-5
    embed_cli.COMMAND.run([f"--checkpoint={ckpt}", f"--input={path}",
                           f"--out={tmp_path / 'y.npy'}"])
    printed = capsys.readouterr().out
    assert "data path: stmem (from the checkpoint's config" in printed
    assert (tmp_path / "y.records.txt").read_text().split() == ["R25#0", "R25#1"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), out["outputs"], rtol=1e-6)


def test_stmem_lead_subsets_take_lead_embeddings_by_position(sit_ckpt):
    """ST-MEM's downstream model for lead II alone uses the embedding trained for lead I (the
    first L of a 12-lead checkpoint); import-torch sets model.lead_embedding="position"."""
    ref, ckpt = sit_ckpt
    backbone = backbones.load(ckpt)
    assert backbone.config.model.lead_embedding == "position"
    patches = np.random.default_rng(9).normal(size=(2, 1, 1, 30, 75)).astype(np.float32)
    batch = {"patches": patches, "lead_indices": np.ones((2, 1), np.int32),   # lead II
             "patch_valid": np.ones((2, 1, 1, 30), bool)}
    got = np.asarray(backbone.runner.features(backbone.graphdef, backbone.state, batch))[:, 0]
    with torch.no_grad():
        want = ref.features(torch.from_numpy(patches[:, 0])).numpy()
    assert rel_err(got, want) <= 1e-5
    config = backbone.config.copy_and_resolve_references()
    config.model.lead_embedding = "canonical"   # ours: lead II keeps lead II's embedding
    params, _, _ = checkpoint.load_model_checkpoint(ckpt)
    graphdef, state = backbone.runner.build(config, params, seed=0)
    canonical = np.asarray(backbone.runner.features(graphdef, state, batch))[:, 0]
    assert rel_err(canonical, want) > 1e-3


def test_embed_and_predict_say_what_reading_repaired(net1d_ckpt, tmp_path, cinc_sample_dir):
    """A record with lead III all invalid, 10 NaN samples in lead II and V2 constant: embed and
    predict had said nothing of it, and ECGFounder's path fed lead III as zeros. Each data
    path's repairs are said, with the counts and leads damaged here (write_damaged)."""
    damaged, clean = write_damaged(tmp_path), str(cinc_sample_dir / "E07500")
    config = config_lib.default_config()
    config.model.size = "tiny"
    checkpoint.save_model_checkpoint(tmp_path / "crema", params_lib.init_params(config.model, 0),
                                     config)
    out = embed.embed(backbones.load(str(tmp_path / "crema")), records=[damaged, clean])
    # Ours: II's 10 samples interpolated, III dropped then derived from I and II, V2 dropped.
    assert out["note"] == (
        "input: 1 of 2 records repaired (crema data path): NaN samples interpolated in 1: "
        "DAMAGED (10 in II); all-NaN leads dropped in 1: DAMAGED (III); flat leads dropped in "
        "1: DAMAGED (V2); limb leads derived in 1: DAMAGED (III)")
    assert out["repairs"] == ["NaN samples interpolated (10 in II); all-NaN leads dropped "
                              "(III); flat leads dropped (V2); limb leads derived (III)", ""]
    # ECGFounder's: every NaN set to 0 (III's 5000 samples and II's 10), flat leads kept.
    got = predict.predict_probabilities(backbones.load(net1d_ckpt[1], with_head=True),
                                        records=[clean, damaged])
    # V2, constant, is fed as it is: said beside the repairs, as a lead not in the file is.
    assert got["note"] == (
        "input: 1 of 2 records repaired, 1 of 2 lacking some leads the model reads (ecgfounder "
        "data path): NaN samples set to 0 in 1: DAMAGED (5010 in II, III); all-NaN leads fed "
        "as zeros in 1: DAMAGED (III); flat leads fed as recorded in 1: DAMAGED (V2)")
    assert predict.row_repairs(got) == [
        "", "NaN samples set to 0 (5010 in II, III); all-NaN leads fed as zeros (III); flat "
        "leads fed as recorded (V2)"]
    # --derive_limb_leads: the all-NaN III counts as absent and is derived from I and II, as
    # it is for a file that lacks it (it had stayed "fed as zeros").
    derived = predict.predict_probabilities(backbones.load(net1d_ckpt[1], with_head=True),
                                            records=[damaged], derive_limb_leads=True)
    assert predict.row_repairs(derived) == [
        "NaN samples set to 0 (5010 in II, III); flat leads fed as recorded (V2); limb leads "
        "derived (III)"]
