"""Model families: every decision that depends on the kind of model, made here and nowhere else.

A family is a kind of backbone; config.model.name names one model of one family:
  family "sit"    "sit_pretrain"  the pretraining model: SiT encoder + MAE decoder + projection
                  "sit_encoder"   the bare SiT encoder (fine-tuned, or an encoder-only import)
  family "net1d"  "net1d"         ECGFounder's Net1D
Callers ask the family (`family_of(config.model)`) rather than compare model names: which module
to build, the fields a warm start must match, the encoder of a pretraining config, the export
layouts, what the model reads and predicts. The family names are the values of the commands'
--backbone flag.

Older checkpoints and configs call the pretraining model "sit": LEGACY_MODEL_NAMES maps such a
name to today's, where a saved or configured name is read (`current_name`).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Mapping

import ml_collections

from crema_jax.models import config as model_config
from crema_jax.models.net1d import Net1D, default_net1d_config
from crema_jax.models.pretrain import PretrainModel
from crema_jax.models.sit import SiT

# An older name of a model -> its name today.
LEGACY_MODEL_NAMES = {"sit": "sit_pretrain"}


@dataclasses.dataclass(frozen=True)
class Family(abc.ABC):
    """What one kind of model is; the subclasses add the methods that differ by kind."""

    name: str                   # the family's name: the --backbone flag value
    title: str                  # how messages name it
    modules: Mapping[str, type]  # config.model.name -> its nnx module class
    default_config: Callable[[], ml_collections.ConfigDict]  # the config.model defaults
    default_model: str          # the model a fresh backbone of this family is (--checkpoint=random)
    # The config.model fields that fix the parameter shapes or meaning: a warm start from a
    # checkpoint that differs in one of them is a different model.
    arch_fields: tuple[str, ...]
    # config.model fields with a closed set of values, checked in order by config_checks.validate.
    field_choices: Mapping[str, tuple]
    reads_patches: bool         # the model reads the data path's patches (its sizes must agree)
    has_sizes: bool             # config.model.size picks the width/depth/heads (SIZES)
    default_preset: str         # the data path (data/presets.py) its checkpoints are trained on
    export_layouts: tuple[str, ...]  # PyTorch layouts it exports to; the first is the default
    fine_tunable: bool          # `finetune` trains it (a fresh head on its encoder)
    predicts_labels: bool       # its head is ECGFounder's label vocabulary (`predict`)

    def has_decoder(self, model_name: str) -> bool:
        """Whether the model named `model_name` is a pretraining model (encoder + decoder)."""
        return False

    @property
    def has_decoder_model(self) -> bool:
        """Whether a model of this family holds a decoder (one `has_decoder` names)."""
        return any(self.has_decoder(name) for name in self.modules)

    def size_fields(self, model_cfg) -> dict:
        """The fields the size entry sets, resolved ({} for a family without sizes)."""
        return {}

    def model_of_params(self, params: Mapping) -> str:
        """The model name whose parameter tree `params` is."""
        return self.default_model

    @abc.abstractmethod
    def describe(self, model_cfg) -> str:
        """The model in one short clause for a command's output, e.g. 'SiT base: width 768,
        depth 12, 12 heads, with decoder' or 'Net1D 12-lead, 150 labels'."""

    def input_leads(self, model_cfg, leads) -> tuple:
        """The leads (canonical names) the model reads when `leads` are asked for."""
        return tuple(leads)


@dataclasses.dataclass(frozen=True)
class SitFamily(Family):
    pretrain_model: str = ""    # the pretraining model's name (encoder + decoder + projection)
    encoder_model: str = ""     # the bare encoder's name

    def has_decoder(self, model_name: str) -> bool:
        return model_name == self.pretrain_model

    def size_fields(self, model_cfg) -> dict:
        return model_config.resolve_size(model_cfg)

    def model_of_params(self, params: Mapping) -> str:
        """A SiT checkpoint holds the pretraining model ("encoder", "decoder", ...) or a bare
        encoder (fine-tuned)."""
        return self.pretrain_model if "encoder" in params else self.encoder_model

    def describe(self, model_cfg) -> str:
        size = model_config.resolve_size(model_cfg)
        named = f" {model_cfg.size}" if model_config.SIZES[model_cfg.size] == size else ""
        heads = size["num_heads"]
        return (f"{self.title}{named}: width {size['width']}, depth {size['depth']}, {heads} "
                f"head{'s' if heads != 1 else ''}, "
                + ("with decoder" if self.has_decoder(model_cfg.name) else "encoder only"))

    def encoder_config(self, model_cfg, *, num_classes: int = 0, drop_path: float = 0.0):
        """The bare encoder's config.model of a pretraining (or encoder) config, with a head of
        num_classes (0 = none) and stochastic depth drop_path."""
        cfg = model_cfg.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.name, cfg.num_classes, cfg.drop_path = self.encoder_model, num_classes, drop_path
        return cfg

    def encoder_params(self, params: Mapping) -> dict:
        """The encoder's part of a checkpoint's params (a bare encoder's are all of them)."""
        return dict(params.get("encoder", params))


@dataclasses.dataclass(frozen=True)
class Net1dFamily(Family):
    def describe(self, model_cfg) -> str:
        classes = int(model_cfg.num_classes)
        return (f"{self.title} {int(model_cfg.in_channels)}-lead, "
                + (f"{classes} label{'s' if classes != 1 else ''}" if classes else "no head"))

    def input_leads(self, model_cfg, leads) -> tuple:
        """The 1-lead model reads lead I."""
        return ("I",) if int(model_cfg.in_channels) == 1 else tuple(leads)


SIT = SitFamily(
    name="sit", title="SiT",
    modules={"sit_pretrain": PretrainModel, "sit_encoder": SiT},
    default_config=model_config.default_model_config, default_model="sit_pretrain",
    arch_fields=("width", "depth", "num_heads", "head_dim", "mlp_ratio", "patch_size",
                 "num_patches", "num_lead_embeddings", "patch_norms"),
    field_choices={"size": tuple(model_config.SIZES), "dtype": ("float32", "bfloat16"),
                   "lead_embedding": ("canonical", "position"),
                   "residual_boundary": ("auto", "on", "off")},
    reads_patches=True, has_sizes=True, default_preset="crema",
    export_layouts=("crema", "stmem"), fine_tunable=True, predicts_labels=False,
    pretrain_model="sit_pretrain", encoder_model="sit_encoder")
NET1D = Net1dFamily(
    name="net1d", title="Net1D", modules={"net1d": Net1D},
    default_config=default_net1d_config, default_model="net1d",
    arch_fields=("in_channels", "filters", "blocks", "kernel", "stride", "group_width",
                 "num_classes"),
    field_choices={}, reads_patches=False, has_sizes=False, default_preset="ecgfounder",
    export_layouts=("ecgfounder",), fine_tunable=False, predicts_labels=True)

# Family name -> family; config.model.name -> its family.
FAMILIES = {f.name: f for f in (SIT, NET1D)}
FAMILY_OF_MODEL = {model: f for f in FAMILIES.values() for model in f.modules}
MODEL_NAMES = tuple(FAMILY_OF_MODEL)


def current_name(model_name: str) -> str:
    """A saved or configured config.model.name as today's name (an older name mapped)."""
    return LEGACY_MODEL_NAMES.get(model_name, model_name)


def family_of(model_cfg_or_name) -> Family:
    """The family of a config.model section or of a model name; an unknown name is a
    ValueError listing the known ones."""
    name = getattr(model_cfg_or_name, "name", model_cfg_or_name)
    if name not in FAMILY_OF_MODEL:
        raise ValueError(f"config.model.name={name!r}: expected one of {sorted(MODEL_NAMES)}")
    return FAMILY_OF_MODEL[name]


def family_named(name: str, *, flag: str = "--backbone") -> Family:
    """The family called `name` (a --backbone flag value); unknown: a ValueError naming the
    flag and the families."""
    if name not in FAMILIES:
        raise ValueError(f"{flag}={name!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]
