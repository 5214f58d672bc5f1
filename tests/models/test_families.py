"""Model families: every model name resolves to its family; an unknown name is one line listing
the known ones; the older name "sit" of the pretraining model is read as "sit_pretrain"."""
import pytest

from crema_jax import config as config_lib
from crema_jax import config_checks
from crema_jax.models import families
from crema_jax.models.net1d import Net1D
from crema_jax.models.pretrain import PretrainModel
from crema_jax.models.sit import SiT


def test_every_model_name_has_one_family_and_module():
    want = {"sit_pretrain": ("sit", PretrainModel), "sit_encoder": ("sit", SiT),
            "net1d": ("net1d", Net1D)}
    got = {name: (families.family_of(name).name, families.family_of(name).modules[name])
           for name in families.MODEL_NAMES}
    assert got == want
    for name in want:   # a config section resolves as its name does
        assert families.family_of(config_lib.default_config(name).model).name == want[name][0]


def test_which_model_has_a_decoder_and_which_model_params_hold():
    assert [families.SIT.has_decoder(n) for n in ("sit_pretrain", "sit_encoder")] == [True, False]
    assert not families.NET1D.has_decoder("net1d")
    assert families.SIT.has_decoder_model and not families.NET1D.has_decoder_model
    assert families.SIT.model_of_params({"encoder": {}, "decoder": {}}) == "sit_pretrain"
    assert families.SIT.model_of_params({"blocks": {}, "norm": {}}) == "sit_encoder"
    assert families.NET1D.model_of_params({"first_conv": {}}) == "net1d"


def test_an_unknown_model_name_lists_the_known_ones():
    line = ("config.model.name='resnet': expected one of ['net1d', 'sit_encoder', "
            "'sit_pretrain']")
    with pytest.raises(ValueError) as err:
        families.family_of("resnet")
    assert str(err.value) == line
    with pytest.raises(ValueError) as err:   # a saved config naming it
        config_lib.from_saved({"model": {"name": "resnet"}})
    assert str(err.value) == line
    with pytest.raises(ValueError, match=r"^--backbone='sit_pretrain': expected one of "
                                         r"\['net1d', 'sit'\]$"):
        families.family_named("sit_pretrain")   # the flag names families, not models


def test_the_older_name_of_the_pretraining_model_is_read_as_today_s():
    assert families.current_name("sit") == "sit_pretrain"
    assert [families.current_name(n) for n in families.MODEL_NAMES] == list(families.MODEL_NAMES)
    saved = config_lib.default_config().to_dict()
    saved["model"]["name"] = "sit"            # as a checkpoint of an older version holds it
    assert config_lib.from_saved(saved).model.name == "sit_pretrain"
    config = config_lib.default_config()
    config.model.name = "sit"                 # a config file or flag written for it
    config_checks.validate(config)
    assert config.model.name == "sit_pretrain"


def test_each_family_describes_a_model_in_one_clause():
    """What import-torch's last line names: ViT-B (ST-MEM's released size) is 768 wide, 12 deep
    with 12 heads; ECGFounder's Net1D reads 12 leads and predicts 150 labels."""
    base = config_lib.default_config("sit_pretrain").model
    assert families.SIT.describe(base) == "SiT base: width 768, depth 12, 12 heads, with decoder"
    encoder = config_lib.default_config("sit_encoder").model
    encoder.size, encoder.width, encoder.head_dim, encoder.num_heads = "tiny", 64, 64, 1
    assert families.SIT.describe(encoder) == "SiT: width 64, depth 2, 1 head, encoder only"
    net1d = config_lib.default_config("net1d").model
    assert families.NET1D.describe(net1d) == "Net1D 12-lead, 150 labels"
    net1d.in_channels, net1d.num_classes = 1, 0
    assert families.NET1D.describe(net1d) == "Net1D 1-lead, no head"
