"""`crema-jax preview`: draw what the model sees, a bundled ECG with its patches and its mask.

    crema-jax preview [--out=preview.png] [--record=E07500] [--mask=random_per_lead] \
        [--mask_ratio=0.75] [--seed=0]
"""
import os

from crema_jax.cli import command
from crema_jax.evaluate import ranges
from crema_jax.runtime import made_folders, storage

COMMAND = command.Command("preview", __doc__, usage="[--out=preview.png] [--record=ID]")
COMMAND.string("out", "preview.png", "Output PNG: a path, or a URL (gs://, s3://) it is "
               "uploaded to.")
COMMAND.string("record", "", "Record id of the bundled sample (default: the first).")
COMMAND.string("mask", "random_per_lead", "Masking strategy (a key of "
               "data.pipeline.masking.MASKS).")
COMMAND.float("mask_ratio", 0.75, "Fraction of patches hidden.", valid=ranges.FRACTION)
COMMAND.integer("seed", 0, "Seed of the crop and the mask.", lower_bound=ranges.SEED.low,
                upper_bound=ranges.SEED.high)
COMMAND.boolean("overwrite", False, "Replace the --out PNG when it exists.")


@COMMAND.main
def main(args) -> None:
    from crema_jax.data import preview  # at run time: --help answers without importing JAX

    if not args.out.lower().endswith(".png"):  # matplotlib would add ".png" to another name
        raise command.FlagValueError(f"--out={args.out}: expected a file name ending in .png")
    storage.check_output_file(args.out, overwrite=args.overwrite)  # a URL: uploaded
    new_folder = made_folders.note(args.out)
    from crema_jax.data.pipeline import masking  # numpy only
    if args.mask not in masking.MASKS:  # it was named as config field data.mask.name
        raise command.FlagValueError(f"--mask={args.mask}: expected one of "
                                     f"{sorted(masking.MASKS)}")
    from crema_jax.data import config as data_config
    cfg = data_config.default_data_config()
    patches = cfg.crop_samples // cfg.patch_size
    try:  # the strategy's own count: 0.999 of 30 patches a lead hides them all
        masking.mask_sizes(args.mask, 12, patches, args.mask_ratio)
    except ValueError:
        raise command.FlagValueError(
            f"flag --mask_ratio={args.mask_ratio}: expected a ratio that leaves a patch visible "
            f"({args.mask} masking of {patches} patches a lead hides them all); lower it") from None
    element, title = preview.load_ecg(args.record)
    try:
        preview.render(element, title, args.out, mask_name=args.mask, ratio=args.mask_ratio,
                       seed=args.seed)
    except OSError as err:  # a folder that cannot hold a file (/proc), read-only, full
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise command.CommandError(f"--out={args.out}: cannot write the PNG there ({reason}); "
                                   "choose a path in a folder you can write to") from None
    if new_folder:
        print(new_folder)
    print(f"wrote {args.out}")
