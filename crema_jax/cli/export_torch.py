"""`crema-jax export-torch`: a checkpoint's weights as a PyTorch state_dict, plus FILE.json.

    crema-jax export-torch --checkpoint=DIR --out=crema.safetensors          # our PyTorch SiT
    crema-jax export-torch --checkpoint=DIR --out=stmem.pth --layout=stmem --include_decoder

Layouts: crema (crema_jax/export/torch_sit.py loads it; .safetensors), stmem (ST-MEM's keys and
{'model': state_dict} wrapping; configs ST-MEM cannot express are refused with the reason),
ecgfounder (Net1D checkpoints; the default for them). Files are written atomically.
"""
from crema_jax.cli import command

COMMAND = command.Command("export-torch", __doc__,
                          usage="--checkpoint=DIR --out=FILE.safetensors|FILE.pth")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("out", None, "Output FILE.safetensors or FILE.pth (FILE.json is written beside "
               "it).", required=True)
COMMAND.enum("layout", "", ["", "crema", "stmem", "ecgfounder"], "Key layout ('' = crema for a "
             "SiT, ecgfounder for Net1D).")
COMMAND.boolean("include_decoder", False, "Also write the MAE decoder (pretraining model).")
COMMAND.boolean("overwrite", False, "Replace FILE and FILE.json when they exist.")


@COMMAND.main
def main(args) -> None:
    from crema_jax.export import export_torch  # at run time: --help answers without importing JAX

    paths = export_torch.run_export(args.checkpoint, args.out, layout=args.layout or None,
                                    include_decoder=args.include_decoder,
                                    overwrite=args.overwrite)
    print("wrote " + " and ".join(paths))
