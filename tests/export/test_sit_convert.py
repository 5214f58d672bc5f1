"""SiT <-> PyTorch: ST-MEM layout against an in-test ST-MEM reference, crema layout against our
own torch module; JAX -> PyTorch -> JAX bit-exact. Sizes: tiny (64 wide; 1 head of 64 so ST-MEM
can express it) and small (ViT-S/75)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from crema_jax import config as config_lib
from crema_jax.data import presets
from crema_jax.runtime import trees
from crema_jax.export import (convert, export_torch, import_torch, infer_config, sit_layouts,
                              torch_sit)
from crema_jax.models import params as params_lib
from crema_jax.models import default_model_config
from tests.references.stmem_torch import StMemEncoder, StMemPretrain, randomise_norms

SIZES = {"tiny": dict(width=64, depth=2, heads=1), "small": dict(width=384, depth=12, heads=6)}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _inputs(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    patches = rng.standard_normal((batch, 12, 30, 75)).astype(np.float32)
    keep = np.sort(np.stack([np.stack([rng.permutation(30)[:7] for _ in range(12)])
                             for _ in range(batch)]), axis=-1)       # (B, 12, 7) per lead
    visible_idx = (keep + 30 * np.arange(12)[None, :, None]).reshape(batch, -1)
    return patches, keep, visible_idx.astype(np.int32)


@pytest.fixture(scope="module", params=list(SIZES))
def imported(request, tmp_path_factory):
    """An ST-MEM full pretraining file with random weights, and its import."""
    torch.manual_seed(0)
    ref = randomise_norms(StMemPretrain(**SIZES[request.param]), seed=1).eval()
    path = tmp_path_factory.mktemp(request.param) / "stmem_full.pth"
    torch.save({"epoch": 3, "model": ref.state_dict(), "optimizer": {}, "config": {"x": 1}}, path)
    params, cfg, kept = import_torch.import_weights(str(path), "stmem")
    return request.param, ref, params, cfg, kept


def _jax_outputs(cfg, params, patches, visible_idx):
    """(features, reconstruction) of the JAX model. Eager on purpose: the per-op compile cache
    is shared by identical blocks, which costs less CPU than compiling the unrolled model."""
    model = params_lib.merge(cfg, params)
    leads = jnp.tile(jnp.arange(12), (patches.shape[0], 1))
    feats = model.encoder.features(jnp.asarray(patches), leads)
    batch = {"patches": jnp.asarray(patches)[:, None], "lead_indices": leads,
             "visible_idx": jnp.asarray(visible_idx)[:, None]}
    return np.asarray(feats), np.asarray(model(batch)["pred"][:, 0])


def test_stmem_import_reproduces_stmem_forward(imported):
    name, ref, params, cfg, kept = imported
    assert sorted({p.split("/")[0] for p in kept}) == ["logit_bias", "logit_scale", "projector"]
    assert cfg.num_patches == 30 and cfg.decoder_width == 256 and cfg.size == (
        "small" if name == "small" else "base")
    patches, keep, visible_idx = _inputs()
    feats, pred = _jax_outputs(cfg, params, patches, visible_idx)
    with torch.no_grad():
        want_feats = ref.encoder.features(torch.from_numpy(patches)).numpy()
        want_pred = ref.reconstruct(torch.from_numpy(patches), torch.from_numpy(keep)).numpy()
    assert rel_err(feats, want_feats) <= 1e-5
    assert rel_err(pred, want_pred) <= 1e-5


def test_stmem_export_is_bit_exact_and_loads_into_stmem(imported, tmp_path):
    name, ref, params, cfg, _ = imported
    want = ref.state_dict()
    full = export_torch.build_state_dict(params, cfg, layout="stmem", include_decoder=True)
    assert sorted(full) == sorted(want)
    assert all(np.array_equal(full[k], want[k].numpy()) for k in want)
    enc = export_torch.build_state_dict(params, cfg, layout="stmem", include_decoder=False)
    want_enc = ref.encoder.state_dict()
    assert sorted(enc) == sorted(want_enc)
    assert all(np.array_equal(enc[k], want_enc[k].numpy()) for k in want_enc)
    if name == "small":
        assert len(full) == 228 and len(enc) == 166
    # .pth wrapping {'model': state_dict}: plain tensors, loadable with weights_only=True.
    out = tmp_path / "export.pth"
    export_torch.write_files(enc, str(out), layout="stmem", model_config={"size": name},
                             full_config={}, step=5, include_decoder=False)
    loaded = torch.load(out, weights_only=True)
    assert loaded["epoch"] == 5
    ref.encoder.load_state_dict(loaded["model"], strict=True)
    assert json.loads((tmp_path / "export.json").read_text())["num_keys"] == len(enc)
    # JAX -> torch -> JAX: bit-exact.
    again, _, kept = import_torch.import_weights(str(out), "stmem")
    flat_a, flat_b = trees.flatten(params), trees.flatten(again)
    assert all(np.array_equal(flat_a[p], flat_b[p]) for p in flat_a if p.startswith("encoder/"))
    assert all(p.startswith(sit_layouts.PRETRAIN_ONLY) for p in kept)


def _torch_export(params, cfg, out, *, include_decoder: bool):
    """`params` written in the crema layout to `out` (and its JSON), loaded as our torch module."""
    state = export_torch.build_state_dict(params, cfg, layout="crema",
                                          include_decoder=include_decoder)
    export_torch.write_files(state, str(out), layout="crema",
                             model_config=export_torch.resolved_model_config(cfg),
                             full_config={}, step=0, include_decoder=include_decoder)
    return torch_sit.load_sit(str(out))


def test_crema_layout_torch_module_matches_jax_and_round_trips(imported, tmp_path):
    name, _, params, cfg, _ = imported
    out = tmp_path / "sit.safetensors"
    torch_model = _torch_export(params, cfg, out, include_decoder=True)
    patches, keep, visible_idx = _inputs(seed=1)
    feats, pred = _jax_outputs(cfg, params, patches, visible_idx)
    leads = torch.arange(12).repeat(2, 1)
    with torch.no_grad():
        t_feats = torch_model.features(torch.from_numpy(patches), leads).numpy()
        t_pred = torch_model.reconstruct(torch.from_numpy(patches), leads,
                                         torch.from_numpy(visible_idx).long()).numpy()
    assert rel_err(t_feats, feats) <= 1e-5
    assert rel_err(t_pred, pred) <= 1e-5
    again, _, kept = import_torch.import_weights(str(out), "crema")
    assert kept == []  # the crema layout with the decoder holds the whole pretraining model
    flat_a, flat_b = trees.flatten(params), trees.flatten(again)
    assert flat_a.keys() == flat_b.keys()
    assert all(np.array_equal(flat_a[p], flat_b[p]) for p in flat_a)


def test_torch_module_reconstructs_under_bf16_autocast(imported, tmp_path):
    """Mixed precision (PyTorch AMP) reconstructs too: the decoder's mask embedding (float32)
    takes the dtype of the embedded bf16 tokens before they are scattered into it. The result
    equals float32's to bf16's precision (8 mantissa bits, ~4e-3 relative per rounding)."""
    _, _, params, cfg, _ = imported
    model_cfg = export_torch.resolved_model_config(cfg)
    state = export_torch.build_state_dict(params, cfg, layout="crema", include_decoder=True)
    torch_model = torch_sit.CremaSiT(model_cfg, with_decoder=True)
    torch_model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    patches, _, visible_idx = _inputs(seed=2)
    args = (torch.from_numpy(patches), torch.arange(12).repeat(2, 1),
            torch.from_numpy(visible_idx).long())
    with torch.no_grad():
        full = torch_model.reconstruct(*args).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = torch_model.reconstruct(*args).float().numpy()
    assert np.isfinite(mixed).all()
    assert 1e-4 < rel_err(mixed, full) <= 5e-2  # rounded to bf16, yet the same reconstruction


def test_stmem_key_count_and_size_for_vit_b():
    cfg = default_model_config()  # base = ViT-B/75
    template = params_lib.abstract_params(cfg)
    enc = convert.expected_torch_shapes(template, sit_layouts.stmem_rules(
        cfg, jax_prefix="encoder/", include_head=False, include_decoder=False))
    full = convert.expected_torch_shapes(template, sit_layouts.stmem_rules(
        cfg, jax_prefix="encoder/", include_head=False, include_decoder=True))
    assert len(enc) == 166 and len(full) == 228
    assert sum(int(np.prod(s)) for s in enc.values()) == 85_150_614
    assert enc["pos_embedding"] == (1, 32, 768) and enc["block11.attn.fn.to_qkv.weight"] == (2304, 768)
    assert full["mask_embedding"] == (1, 1, 256) and full["decoder_blocks.3.ff.fn.net.3.weight"] == (256, 1024)
    # import-torch infers ViT-B from the shapes alone (zero-stride arrays: no memory).
    for shapes, want_full in ((enc, False), (full, True)):
        fake = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
        inferred, is_full = infer_config.infer_stmem_config(fake)
        assert is_full == want_full and inferred.size == "base" and inferred.num_classes == 0
        assert not inferred.width and inferred.num_patches == 30 and inferred.patch_size == 75


def test_a_crema_layout_file_holds_a_decoder_exactly_when_written_with_one():
    """import-torch, torch_sit and the model card tell an encoder from a pretraining model by
    convert.holds_decoder; here against the crema rule table's keys, both decoder variants."""
    for variant in ("per_lead", "axial"):
        cfg = default_model_config()
        cfg.size, cfg.decoder_variant = "tiny", variant
        for with_decoder in (False, True):
            rules = sit_layouts.crema_rules(cfg, jax_prefix="encoder/", include_head=False,
                                            include_decoder=with_decoder)
            keys = [k for r in rules for k in r.torch_keys]
            assert convert.holds_decoder(keys) == with_decoder
    assert not convert.holds_decoder(["encoder.decoder_like.weight", "head.weight"])


def test_configs_stmem_cannot_express_are_refused():
    cfg = default_model_config()
    cfg.size = "tiny"  # 2 heads of 32
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params_lib.abstract_params(cfg))
    with pytest.raises(export_torch.ExportError, match="head_dim=32"):
        export_torch.build_state_dict(params, cfg, layout="stmem", include_decoder=False)
    cfg.head_dim, cfg.num_heads, cfg.decoder_depth = 64, 1, 2
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params_lib.abstract_params(cfg))
    # One head as wide as the model: ST-MEM has no output projection, so ours must be the
    # identity to be written without one.
    with pytest.raises(export_torch.ExportError, match="attn/out/kernel: ST-MEM has no output"):
        export_torch.build_state_dict(params, cfg, layout="stmem", include_decoder=False)
    for block in params["encoder"]["blocks"].values():
        block["attn"]["out"]["kernel"] = np.eye(64, dtype=np.float32)[None]
    sd = export_torch.build_state_dict(params, cfg, layout="stmem", include_decoder=False)
    assert not any("to_out" in k for k in sd)
    with pytest.raises(export_torch.ExportError, match="ST-MEM's decoder is"):
        export_torch.build_state_dict(params, cfg, layout="stmem", include_decoder=True)


def test_fine_tuned_encoder_with_head_exports_to_both_layouts(tmp_path):
    """A bare SiT with a classification head (fine-tuned): ST-MEM's `head.*` keys; our torch
    module's logits match the JAX model's."""
    torch.manual_seed(6)
    ref = randomise_norms(StMemEncoder(64, 2, 1, num_classes=5), seed=7).eval()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    cfg, full = infer_config.infer_stmem_config(state)
    assert cfg.num_classes == 5 and not full
    cfg.name = "sit_encoder"  # the bare encoder, as a fine-tuned checkpoint holds it
    rules = sit_layouts.stmem_rules(cfg, jax_prefix="", include_head=True, include_decoder=False)
    encoder, kept = import_torch.state_dict_to_params(state, cfg, rules, fmt="stmem", path="mem")
    assert kept == []   # one head of 64 = the width: ST-MEM's identity to_out, no tensors
    assert not any("to_out" in k for k in state)
    sd = export_torch.build_state_dict(encoder, cfg, layout="stmem", include_decoder=False)
    assert sorted(sd) == sorted(ref.state_dict()) and "head.weight" in sd
    # A module built from the reference's rules (no to_out for one head as wide as the model)
    # takes the exported file with strict=True and computes the original's logits.
    clone = StMemEncoder(64, 2, 1, num_classes=5).eval()
    clone.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    # The lead-embedding rule travels with the file: position (ST-MEM's) and canonical; so does
    # the data path (F.json's config, as export-torch writes it).
    run = config_lib.default_config("sit_encoder")
    presets.apply(run.data, "stmem")
    for rule in ("position", "canonical"):
        cfg.lead_embedding = rule
        export_torch.write_files(sd, str(tmp_path / f"{rule}.pth"), layout="stmem",
                                 model_config=export_torch.resolved_model_config(cfg),
                                 full_config=export_torch.shared_config(run), step=0,
                                 include_decoder=False)
        import_torch.run_import(str(tmp_path / f"{rule}.pth"), "stmem", str(tmp_path / rule))
        saved = config_lib.load_checkpoint_config(tmp_path / rule)
        assert saved.model.lead_embedding == rule and saved.data.preset == "stmem"
    cfg.lead_embedding = "position"
    patches = _inputs(seed=2)[0]
    model = params_lib.merge(cfg, encoder)
    got = np.asarray(model.logits(jnp.asarray(patches), jnp.tile(jnp.arange(12), (2, 1))))
    with torch.no_grad():
        want = ref(torch.from_numpy(patches)).numpy()
        assert rel_err(clone(torch.from_numpy(patches)).numpy(), want) <= 1e-6
    assert rel_err(got, want) <= 1e-5
    crema = export_torch.build_state_dict(encoder, cfg, layout="crema", include_decoder=False)
    torch_model = torch_sit.CremaSiT(export_torch.resolved_model_config(cfg))
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in crema.items()}, strict=True)
    with torch.no_grad():
        mine = torch_model.logits(torch.from_numpy(patches), torch.arange(12).repeat(2, 1)).numpy()
    assert rel_err(mine, want) <= 1e-5


def test_crema_variants_export_to_the_torch_module_and_back(tmp_path):
    """patch_norms=False and the axial decoder: the crema layout carries them (tensors and
    config), our torch module computes the same, and ST-MEM's layout refuses them by name."""
    cfg = default_model_config()
    cfg.size, cfg.num_heads, cfg.head_dim = "tiny", 2, 32
    cfg.decoder_width, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_head_dim = 32, 2, 2, 16
    cfg.patch_norms, cfg.decoder_variant = False, "axial"
    cfg.residual_boundary = "off"
    params = params_lib.init_params(cfg, 3)
    flat = trees.flatten(params)
    assert not any("in_norm" in p or "out_norm" in p for p in flat)
    assert any(p.startswith("decoder/lead_blocks/1/") for p in flat)
    out = tmp_path / "variant.safetensors"
    torch_model = _torch_export(params, cfg, out, include_decoder=True)
    patches, _, visible_idx = _inputs(seed=2)
    patches = patches * np.linspace(0.2, 3.0, 12)[None, :, None, None]  # amplitudes now matter
    feats, pred = _jax_outputs(cfg, params, patches.astype(np.float32), visible_idx)
    leads = torch.arange(12).repeat(2, 1)
    with torch.no_grad():
        x = torch.from_numpy(patches.astype(np.float32))
        t_feats = torch_model.features(x, leads).numpy()
        t_pred = torch_model.reconstruct(x, leads, torch.from_numpy(visible_idx).long()).numpy()
    assert rel_err(t_feats, feats) <= 1e-5 and rel_err(t_pred, pred) <= 1e-5
    again, again_cfg, kept = import_torch.import_weights(str(out), "crema")
    assert kept == [] and again_cfg.patch_norms is False
    assert again_cfg.decoder_variant == "axial"
    flat_b = trees.flatten(again)
    assert flat.keys() == flat_b.keys() and all(np.array_equal(flat[p], flat_b[p]) for p in flat)
    problems = " ".join(sit_layouts.stmem_incompatibilities(cfg, include_decoder=True))
    assert "model.patch_norms=False" in problems and "model.decoder_variant='axial'" in problems


@pytest.mark.parametrize("rule", ["position", "canonical"])
def test_the_torch_module_follows_the_lead_embedding_rule_on_lead_subsets(tmp_path, rule):
    """"position" (what import-torch --format=stmem writes) embeds the l-th fed lead with
    embedding l: the exported torch module took the lead ids' embeddings, so on [II] or
    [V6, I, aVF] its features were 16% off the JAX model's (all 12 leads in order hid it: both
    rules agree there)."""
    cfg = default_model_config()
    cfg.size, cfg.lead_embedding, cfg.residual_boundary = "tiny", rule, "off"
    params = params_lib.init_params(cfg, 4)
    torch_model = _torch_export(params, cfg, tmp_path / "sit.safetensors", include_decoder=False)
    model = params_lib.merge(cfg, params)
    patches, _, _ = _inputs(seed=3)
    for subset in ([1], [11, 0, 5], [6, 7, 8, 9, 10, 11]):
        x = patches[:, subset]
        leads = np.tile(np.asarray(subset), (x.shape[0], 1))
        want = np.asarray(model.encoder.features(jnp.asarray(x), jnp.asarray(leads)))
        with torch.no_grad():
            got = torch_model.features(torch.from_numpy(x), torch.from_numpy(leads)).numpy()
        assert rel_err(got, want) <= 1e-5, (rule, subset)


@pytest.mark.parametrize("include_decoder", [False, True])
def test_a_scan_layers_model_round_trips_through_the_crema_layout(tmp_path, include_decoder):
    """An export of a scan_layers=True model says so in its config; the import (unrolled
    blocks) had read that flag and failed on an encoder-only file with a KeyError."""
    cfg = default_model_config()
    cfg.size, cfg.num_heads, cfg.head_dim, cfg.scan_layers = "tiny", 2, 32, True
    cfg.decoder_width, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_head_dim = 32, 2, 2, 16
    params = params_lib.init_params(cfg, 4)
    assert sit_layouts.is_stacked(params["encoder"]["blocks"])
    out = tmp_path / "scan.safetensors"
    _torch_export(params, cfg, out, include_decoder=include_decoder)
    again, again_cfg, _ = import_torch.import_weights(str(out), "crema")
    assert again_cfg.scan_layers is False
    expected = trees.flatten(sit_layouts.unstack_blocks(params))
    if not include_decoder:  # a bare encoder: the encoder's arrays, without its prefix
        expected = {p.removeprefix("encoder/"): v for p, v in expected.items()
                    if p.startswith("encoder/")}
    got = trees.flatten(again)
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[p], expected[p]) for p in got)


def test_import_torch_warns_once_and_names_the_model_it_found(tmp_path, capsys, caplog):
    """A full ST-MEM file holds no projection head: that is said in ONE line (it had been printed
    and logged), and the last line names the model: width 64, depth 2, one head, with decoder."""
    from crema_jax.cli import import_torch as import_cli
    torch.manual_seed(0)
    torch.save({"epoch": 3, "model": StMemPretrain(**SIZES["tiny"]).state_dict()},
               tmp_path / "full.pth")
    import_cli.COMMAND.run(["--format=stmem", str(tmp_path / "full.pth"),
                            f"--out={tmp_path / 'out'}"])
    out, err = capsys.readouterr()
    said = (out + err + caplog.text).lower()
    assert said.count("freshly initialised") == 1, said
    assert (f"freshly initialised (seed 0; not in {tmp_path / 'full.pth'}): logit_bias (1 "
            "tensor), logit_scale (1 tensor), projector (4 tensors)") in out
    assert out.splitlines()[-1] == (f"wrote {tmp_path / 'out' / 'checkpoints' / '0'}, SiT: width "
                                    "64, depth 2, 1 head, with decoder (data path: the stmem "
                                    "preset)")
