"""The `crema-jax` command: one entry point, one module per subcommand.

Each subcommand lives in its own module that defines its absl flags at import time and a
`main(argv)` function. Only the chosen module is imported, so flag names never collide and
`crema-jax --help` stays fast (no JAX import).
"""
import importlib
import sys

# name -> (module, one-line help). A new subcommand is one line here.
SUBCOMMANDS = {
    "preview": ("crema_jax.data.preview", "write a PNG of a bundled ECG with its patches and mask"),
    "prepare": ("crema_jax.data.prepare", "convert a dataset into a preprocessed ArrayRecord cache"),
    "pretrain": ("crema_jax.train.pretrain", "pretrain a SiT with a CREMA/MAE/contrastive loss"),
    "probe": ("crema_jax.evaluate.probe", "linear probing of frozen features"),
    "finetune": ("crema_jax.evaluate.finetune", "full fine-tuning on a labelled dataset"),
    "embed": ("crema_jax.export.embed", "write pooled features (or logits) for ECGs"),
    "export-torch": ("crema_jax.export.export_torch", "export a checkpoint to PyTorch safetensors"),
    "import-torch": ("crema_jax.export.import_torch", "import ST-MEM/ECGFounder/crema PyTorch weights"),
    "predict": ("crema_jax.export.predict", "ECGFounder label probabilities for WFDB records"),
}


def _usage() -> str:
    lines = ["usage: crema-jax COMMAND [--flag=value ...]", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("`crema-jax COMMAND --help` lists a command's flags.")
    return "\n".join(lines)


def run(argv=None) -> None:
    if argv is None:  # The process's entry point: see crema_jax/host_malloc.py.
        from crema_jax import host_malloc

        host_malloc.reexec_with_hugetlb()
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in SUBCOMMANDS:
        print(f"crema-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    from absl import app  # Imported late: `crema-jax --help` needs nothing else.

    app.run(module.main, argv=[f"crema-jax {name}"] + argv[2:])


if __name__ == "__main__":
    run()
