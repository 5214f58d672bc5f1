"""config_checks: the config's numeric fields checked by runtime/ranges.py's Range (the values it
refuses beyond the bounds, and the words of each refusal)."""
import pathlib

import pytest

from crema_jax import config as config_lib
from crema_jax import config_checks

TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "crema_tiny.py")


def _refusal(field: str, value) -> str | None:
    config = config_lib.load_config_file(TINY)
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
    try:
        config_checks.validate(config)
    except config_checks.ConfigValueError as err:
        assert err.config_field == field
        return str(err)
    return None


@pytest.mark.parametrize("field,value,expected", [
    ("train.seed", True, "an integer >= 0"),              # a bool is no count (it had passed)
    ("train.process_id", -2, "-1 (auto) or an id >= 0"),
    ("optim.betas", (0.9, 0.95, 0.99), "two decay rates in [0, 1)"),
    ("evals.fewshot_probe.l2_grid", (), "one or more penalties > 0"),
    ("data.mask.ratio", 1.0, "a fraction in (0, 1) (0 hides nothing to reconstruct, 1 leaves "
                             "the encoder nothing to see)"),
    ("data.target_fs", None, "a rate in Hz in [50, 10000]"),
    ("model.drop_path", float("inf"), "a finite number"),  # said before its range, as elsewhere
    # 100000 workers had started hundreds of processes that ignored SIGTERM and Ctrl-C.
    ("data.num_workers", 100_000, "an integer in [0, 256]"),
    ("data.num_workers", 257, "an integer in [0, 256]"),
    ("data.read_threads", 257, "an integer in [0, 256]"),
    # An unknown split had read no record: "no record of the data could be read (0 tried: the
    # source is empty)"; an unknown layout was named as --layout, a flag pretrain has not.
    ("data.split", "bogus", "one of 'train', 'val', 'test' or '' (every record)"),
    ("evals.reconstruction.split", "validation", "one of 'train', 'val', 'test' or '' (every "
                                                 "record)"),
    ("data.layout", "nope", "one of ['clinical_exports', 'code15', 'manifest', 'mimic_iv_ecg', "
                            "'numpy', 'ptbxl', 'wfdb_folder']"),
])
def test_a_field_outside_its_range_names_field_value_and_range(field, value, expected):
    assert _refusal(field, value) == f"config.{field}={value!r}: expected {expected}"


@pytest.mark.parametrize("field,value", [
    ("train.process_id", -1), ("train.process_id", 0), ("data.mask.ratio", 0.5),
    ("evals.fewshot_probe.l2_grid", (0.1,)), ("data.target_fs", 10_000),
    ("data.num_workers", 256), ("data.read_threads", 256),
    ("data.split", ""), ("data.split", "test"), ("evals.reconstruction.split", "val"),
])
def test_values_at_the_edges_of_a_range_pass(field, value):
    assert _refusal(field, value) is None


def test_a_layout_option_the_layout_has_not_is_refused_with_the_config():
    """A misspelt option had been refused only once the model was built, the run's workdir made."""
    config = config_lib.load_config_file(TINY)
    config.data.layout = "wfdb_folder"
    config.data.layout_options = {"val_fracton": 0.1}
    with pytest.raises(config_checks.ConfigValueError) as refused:
        config_checks.validate(config)
    assert refused.value.config_field == "data.layout_options"
    assert str(refused.value) == (
        "config.data.layout_options={'val_fracton': 0.1}: layout wfdb_folder: unknown option "
        "'val_fracton'; it takes val_fraction, test_fraction, label_names, source")
    config.data.layout_options = {"val_fraction": 0.1}
    config_checks.validate(config)


def test_a_model_whose_patches_the_data_path_does_not_cut_is_refused_naming_both():
    """validate_patches, for a run as for an import: model.num_patches 20 against a crop of
    crop_samples / patch_size patches is told as the crop the model reads (num_patches x
    patch_size), an override of either field a usage error (related)."""
    config = config_lib.load_config_file(TINY)
    patch = config.data.patch_size
    config.model.num_patches = 20
    with pytest.raises(config_checks.ConfigValueError) as err:
        config_checks.validate(config)
    assert str(err.value) == (
        f"config.data.crop_samples={config.data.crop_samples}: expected {20 * patch}, the "
        f"model's num_patches 20 x patch_size {patch} (the patches of one lead that the model reads)")
    assert err.value.config_field == "data.crop_samples"
    assert set(err.value.related) == {"model.num_patches", "model.patch_size"}
