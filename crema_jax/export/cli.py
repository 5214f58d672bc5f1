"""absl flag helpers shared by the export CLIs.

Each subcommand module defines its flags at import (crema_jax/main.py imports only the chosen
one). Tests and notebooks may import several of these modules into one process, so a flag that
another module already defined (e.g. --out, --checkpoint) is reused instead of redefined.
"""
from absl import flags


def _define(definer, name, *args):
    if name not in flags.FLAGS:
        definer(name, *args)


def string(name, default, help_text):
    _define(flags.DEFINE_string, name, default, help_text)


def integer(name, default, help_text):
    _define(flags.DEFINE_integer, name, default, help_text)


def boolean(name, default, help_text):
    _define(flags.DEFINE_boolean, name, default, help_text)


def enum(name, default, values, help_text):
    _define(flags.DEFINE_enum, name, default, values, help_text)


def value(name):
    return getattr(flags.FLAGS, name)


def quiet_logs() -> None:
    """WARNING and above only (Orbax logs every file it opens at INFO), unless --verbosity or
    -v was given explicitly."""
    from absl import logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
