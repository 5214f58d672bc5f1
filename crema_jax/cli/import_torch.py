"""`crema-jax import-torch`: PyTorch weights -> an Orbax checkpoint that pretrain (continue),
probe, finetune, embed and predict read.

    crema-jax import-torch --format=stmem st_mem_vit_base.pth --out=/ckpt/stmem
    crema-jax import-torch --format=ecgfounder 12_lead_ECGFounder.pth --out=/ckpt/ecgfounder
    crema-jax import-torch --format=ecgfounder \
        hf://PKUDigitalHealth/ECGFounder/12_lead_ECGFounder.pth --out=/ckpt/ecgfounder
    crema-jax import-torch hf://OWNER/REPO --out=/ckpt/model    # a folder export-torch
                                                                 # --hub_folder wrote (or its path)

ST-MEM's two files (encoder; encoder + decoder) are published by its authors through their
repository, bakqui/ST-MEM on GitHub (st_mem_vit_base.pth above stands for either).
`hf://OWNER/REPO[@REVISION][/FILE]` is fetched through huggingface_hub (`pip install
crema_jax[hub]`; its cache, HF_HUB_OFFLINE and token apply); the commit fetched is recorded in
the checkpoint's config (`source`). The model config is inferred from the tensor shapes; the
data path (rate, crop, filters) is the one in the folder's config.json or in the FILE.json
export-torch wrote beside a file, else the format's preset (the printed line says which).
Files are loaded safely (safetensors, or torch.load(weights_only=True) only) and checked
completely before anything is written.
"""
from crema_jax.cli import command
from crema_jax.evaluate import ranges

COMMAND = command.Command("import-torch", __doc__, usage="[--format=crema|stmem|ecgfounder] "
                          "--out=DIR", positional="FILE|FOLDER|hf://OWNER/REPO[@REV][/FILE]")
COMMAND.enum("format", None, ["crema", "stmem", "ecgfounder"], "Layout of the PyTorch file "
             "(required for a file; a folder's config.json says its own). stmem: ST-MEM's files, "
             "published through its authors' repository, bakqui/ST-MEM on GitHub.")
COMMAND.string("out", None, "Output: a new workdir (checkpoints/0/ inside).", required=True)
COMMAND.integer("seed", 0, "Seed for model parts the file does not hold (e.g. the "
                "decoder).", lower_bound=ranges.SEED.low, upper_bound=ranges.SEED.high)


@COMMAND.main
def main(args) -> None:
    from crema_jax.export import import_torch  # at run time: --help answers without importing JAX
    from crema_jax.runtime import checkpoint_errors

    if not args.verbose:  # a failed save (a full disk) is its one error line, not Orbax's logs
        checkpoint_errors.quiet_background_save_errors()
    if len(args.positional) != 1:
        raise command.FlagValueError(f"expected one weight FILE, FOLDER or hub id, got "
                                     f"{len(args.positional)} (usage: {COMMAND.usage_line()})")
    step_dir, model, data_from = import_torch.run_import(args.positional[0], args.format,
                                                         args.out, seed=args.seed)
    print(f"wrote {step_dir}, {model} ({data_from})")
