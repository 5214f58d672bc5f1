"""`crema-jax export-torch`: a checkpoint's weights as a PyTorch state_dict, plus FILE.json.

    crema-jax export-torch --checkpoint=DIR --out=crema.safetensors          # our PyTorch SiT
    crema-jax export-torch --checkpoint=DIR --out=stmem.pth --layout=stmem --include_decoder
    crema-jax export-torch --checkpoint=DIR --hub_folder=FOLDER  # then: hf upload OWNER/REPO FOLDER

Layouts: crema (crema_jax/export/torch_sit.py loads it; .safetensors), stmem (ST-MEM's keys and
{'model': state_dict} wrapping; configs ST-MEM cannot express are refused with the reason),
ecgfounder (Net1D checkpoints; the default for them). Files are written atomically.
--hub_folder writes a folder to upload to the Hugging Face hub: model.safetensors (the default
layout), config.json (architecture and data path) and a model card (README.md); `import-torch`
reads it back, from the folder or the hub, with no further flag.
"""
from crema_jax.cli import command

COMMAND = command.Command("export-torch", __doc__,
                          usage="--checkpoint=DIR --out=FILE.safetensors|FILE.pth "
                                "| --hub_folder=DIR")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("out", None, "Output FILE.safetensors or FILE.pth (FILE.json is written beside "
               "it): a path, or a URL (gs://, s3://) both are uploaded to.")
COMMAND.string("hub_folder", None, "Output folder for the hub (instead of --out), a local path: "
               "model.safetensors, config.json, README.md.")
COMMAND.enum("layout", "", ["", "crema", "stmem", "ecgfounder"], "Key layout ('' = crema for a "
             "SiT, ecgfounder for Net1D).")
COMMAND.boolean("include_decoder", False, "Also write the MAE decoder (pretraining model).")
COMMAND.boolean("overwrite", False, "Replace FILE and FILE.json (or the folder's files) when they "
                "exist.")


@COMMAND.main
def main(args) -> None:
    # At run time: --help answers without importing JAX.
    from crema_jax.export import export_torch, hub_folder

    if bool(args.out) == bool(args.hub_folder):
        raise command.CommandError(f"give --out or --hub_folder, one of them (usage: "
                                   f"{COMMAND.usage_line()})")
    if args.hub_folder:
        if args.layout:
            raise command.CommandError("--layout: a hub folder holds the model's default layout")
        paths = hub_folder.write_folder(args.checkpoint, args.hub_folder,
                                        include_decoder=args.include_decoder,
                                        overwrite=args.overwrite)
        print("wrote " + ", ".join(paths))
        return
    paths = export_torch.run_export(args.checkpoint, args.out, layout=args.layout or None,
                                    include_decoder=args.include_decoder,
                                    overwrite=args.overwrite)
    print("wrote " + " and ".join(paths))
