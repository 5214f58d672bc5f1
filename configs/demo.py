"""Demo: pretrain the tiny CREMA model on the bundled real ECGs in a few minutes on a laptop CPU.

    crema-jax pretrain --config=configs/demo.py --workdir=/tmp/crema_demo

Watch the loss fall in the progress line, then open /tmp/crema_demo/reconstruction.png: every lead
of a held-back (test-split) ECG, the patches the encoder never saw (shaded), and the model's
reconstruction of them. What to expect from so short a run: the total loss falls mostly through the
contrastive term (about 2.1 -> 0.5); the MAE term leaves its "predict each patch's mean" plateau
only after much longer training, so the tiny model's reconstruction is still close to flat. The
demo shows the whole pipeline working end to end, not a trained model.
"""
import importlib.util
import pathlib

from crema_jax.data import layouts


def _tiny_config():
    """configs/crema_tiny.py's config: the demo trains that model."""
    path = pathlib.Path(__file__).with_name("crema_tiny.py")
    spec = importlib.util.spec_from_file_location("crema_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    # Tiny SiT (64 wide, 2 deep), its proportionate decoder, crema loss: a step takes ~0.1 s on
    # 2 cores.
    config = _tiny_config()
    # The 36 CinC 2021 records shipped in the package (train/val/test split by record hash).
    config.data.layout = "wfdb_folder"
    config.data.root = str(layouts.sample_data_dir())
    config.data.split = "train"
    config.train.global_batch_size = 16   # 2 batches per epoch of the 32 training records.
    # Raw (globally z-scored) targets instead of ST-MEM's per-patch normalised ones: the plot then
    # shows the prediction itself, in signal units, not re-scaled by the hidden patch's own stats.
    config.loss.norm_pix_loss = False
    config.train.num_steps = 300
    config.train.reconstruction_png = True
    # A tiny model on a tiny dataset tolerates (and needs, to show progress in minutes) a far
    # larger lr than ST-MEM's batch-scaled 1.5e-4 x 16/256.
    config.optim.scale_lr_with_batch = False
    config.optim.base_lr = 2e-3
    config.optim.warmup_steps = 20
    config.optim.grad_clip_norm = 1.0
    config.train.log_every_steps = 10
    config.checkpoint.every_steps = 100
    config.mesh.data = 1                  # one CPU device: nothing to shard in a demo.
    return config
