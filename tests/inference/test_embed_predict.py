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

from crema_jax.data import layouts, records
from crema_jax.export import import_torch
from crema_jax.inference import backbones, embed, predict
from tests.export.ecgfounder_torch_ref import Net1DRef
from tests.export.stmem_torch_ref import StMemEncoder, randomise_norms

SMALL_NET1D = dict(in_channels=12, filters=(16, 32), blocks=(1, 2), n_classes=150)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def ecgfounder_preprocess(x, fs=500.0):
    """The authors' recipe, written from reference-ecgfounder.md with scipy."""
    x = np.nan_to_num(np.asarray(x, np.float64))
    b, a = scipy.signal.iirnotch(50.0, 30.0, fs=fs)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    x = scipy.signal.sosfiltfilt(scipy.signal.butter(4, [0.67, 40], "bandpass", fs=fs,
                                                     output="sos"), x, axis=-1)
    width = int(0.4 * fs) + 1
    width += 1 - width % 2
    x = x - np.stack([scipy.ndimage.median_filter(r, size=width, mode="nearest") for r in x])
    return ((x - x.mean()) / (x.std() + 1e-8)).astype(np.float32)


def stmem_preprocess(x, fs=250.0):
    """ST-MEM: order-5 zero-phase high-pass 0.67 Hz and low-pass 40 Hz, one global z-score."""
    x = np.asarray(x, np.float64)
    for cut, kind in ((0.67, "highpass"), (40.0, "lowpass")):
        x = scipy.signal.sosfiltfilt(scipy.signal.butter(5, cut, kind, fs=fs, output="sos"), x,
                                     axis=-1)
    return ((x - x.mean()) / x.std()).astype(np.float32)


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


def test_predict_matches_reference_on_real_records(net1d_ckpt, cinc_sample_dir, tmp_path):
    ref, ckpt = net1d_ckpt
    paths = [str(cinc_sample_dir / r) for r in ("E07500", "E07503")]
    signals = [records.read_record(p, target_fs=500).signal for p in paths]
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
    assert rows[0] == ["record"] + predict.label_names() and len(rows) == 3
    np.testing.assert_allclose(np.array(rows[1][1:], float), want[0], atol=2e-6)
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
    with pytest.raises(embed.EmbedError, match="takes 12 leads"):
        embed.embed(backbone, array=x[:, :3], raw=True)


def test_embed_sit_raw_and_three_crop_protocol(sit_ckpt):
    ref, ckpt = sit_ckpt
    backbone = backbones.load(ckpt)
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((3, 12, 2250)).astype(np.float32)
    got = embed.embed(backbone, array=raw, raw=True, batch_size=2)["outputs"]
    with torch.no_grad():
        want = ref.features(torch.from_numpy(raw.reshape(3, 12, 30, 75))).numpy()
    assert rel_err(got, want) <= 1e-5

    # Protocol: 10 s at 500 Hz -> 250 Hz, ST-MEM filters + z-score, crops 0/125/250, mean.
    ecg = np.cumsum(rng.standard_normal((2, 12, 5000)), axis=-1).astype(np.float32) * 0.01
    got = embed.embed(backbone, array=ecg, fs=500.0, batch_size=2)["outputs"]
    want = []
    for e in ecg:
        x = stmem_preprocess(records.resample(e, 500.0, 250.0)[0])
        crops = np.stack([x[:, o:o + 2250].reshape(12, 30, 75) for o in (0, 125, 250)])
        with torch.no_grad():
            want.append(ref.features(torch.from_numpy(crops)).numpy().mean(0))
    assert rel_err(got, np.stack(want)) <= 1e-5

    with pytest.raises(embed.EmbedError, match=r"\(N, 12, 2250\)"):
        embed.embed(backbone, array=raw[:, :, :2000], raw=True)
    with pytest.raises(ValueError, match="no classification head"):
        embed.embed(backbone, array=raw, raw=True, logits=True)


def test_record_lists_globs_and_folders(cinc_sample_dir):
    folder = layouts.expand_records(str(cinc_sample_dir))
    assert len(folder) == 50 and folder == sorted(folder)
    assert layouts.expand_records(str(cinc_sample_dir / "E0750*.hea")) == folder[:10]
    two = layouts.expand_records(f"{cinc_sample_dir}/E07500.hea,{cinc_sample_dir}/E07501")
    assert two == [str(cinc_sample_dir / "E07500"), str(cinc_sample_dir / "E07501")]


def test_imported_checkpoints_load_as_evaluation_backbones(net1d_ckpt, sit_ckpt):
    """probe/finetune read import-torch output through the backbone registry, which picks the
    family from the checkpoint."""
    sit = backbones.load(sit_ckpt[1])
    net = backbones.load(net1d_ckpt[1])
    assert (sit.name, sit.width, net.name, net.width) == ("sit", 64, "net1d", 32)
    with pytest.raises(ValueError, match="holds a 'net1d' model"):
        backbones.load(net1d_ckpt[1], backbone="sit")


def test_one_lead_model_reads_lead_one(cinc_sample_dir, tmp_path):
    torch.manual_seed(8)
    ref = Net1DRef(**{**SMALL_NET1D, "in_channels": 1}).eval()
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "one.pth")
    import_torch.run_import(str(tmp_path / "one.pth"), "ecgfounder", str(tmp_path / "ckpt"))
    signal = records.read_record(cinc_sample_dir / "E07501", target_fs=500).signal
    got = predict.predict_probabilities(backbones.load(str(tmp_path / "ckpt"), with_head=True),
                                        records=[str(cinc_sample_dir / "E07501")])["probs"]
    x = ecgfounder_preprocess(signal[:1])[None]
    with torch.no_grad():
        want = torch.sigmoid(ref(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
