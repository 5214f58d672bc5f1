"""A pretraining config that cannot run: a config file that gives no config, an unknown or
misspelt field, a number outside its field's domain (set by a flag: exit 2 naming the flag; in
the file: exit 1 naming the field), learning rates that cannot train, a preset renamed by an
override, an unknown augmentation, a mask ratio that hides every patch, a lead fed twice,
synthetic records beside a named dataset. Each is refused before any compile, no workdir made."""
import pytest

from crema_jax import config as config_lib
from crema_jax import config_checks
from crema_jax.cli import pretrain
from tests.cli.conftest import _fails, assert_one_error_line
from tests.cli.hostile.helpers import REPO, SAMPLE, TINY, _cli, _hashes, _one_line


@pytest.mark.parametrize("text,message", [
    ("", "defines no get_config()"),
    ("def get_config():\n    raise RuntimeError('no data here')\n",
     "RuntimeError: no data here"),
    ("def get_config(:\n    pass\n", "SyntaxError: invalid syntax (line 1)"),
    ("def get_config():\n    return None\n", "get_config() returned NoneType; expected an "
     "ml_collections.ConfigDict"),
    (None, "no such file"),
])
def test_a_config_file_that_gives_no_config_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "my_config.py"
    if text is not None:
        path.write_text(text)
    before = _hashes(tmp_path)
    done = _cli("pretrain", f"--config={path}", f"--workdir={tmp_path / 'run'}")
    _one_line(done, "pretrain", f"--config: config file {path}: {message}")
    assert _hashes(tmp_path) == before                      # no workdir made, file unchanged


@pytest.mark.parametrize("override, fragment, code", [
    ("--config.model.nonexistent=1", "config.model has no field 'nonexistent'", 2),
    ("--config.model.dpeth=2", "did you mean config.model.depth", 2),
    ("--config.checkpoint.every_steps=0", "config.checkpoint.every_steps=0", 2),
    ("--config.data.mask.ratio=0.0", "config.data.mask.ratio=0.0", 2),
    ("--config.data.crop_samples=2000", "data.crop_samples=2000", 2),
    # It had said "random_per_lead masking of -1 patches a lead" of the mask ratio.
    ("--config.data.crop_samples=0", "flag --config.data.crop_samples=0: expected a positive "
     "multiple of data.patch_size=75 (whole patches, at least one a lead)", 2),
    ("--config.data.crop_samples=75", "flag --config.data.crop_samples=75: config.data.mask."
     "ratio=0.75: expected a ratio that leaves a patch visible (random_per_lead masking of 1 "
     "patch a lead: data.crop_samples=75 / data.patch_size=75)", 2),
])
def test_impossible_config_values_are_refused_before_any_compile(tmp_path, capsys, override,
                                                                 fragment, code):
    workdir = tmp_path / "run"
    _fails(pretrain, [f"--config={TINY}", f"--workdir={workdir}", override,
                      "--config.data.synthetic_records=16"], capsys, fragment, code=code)
    assert not workdir.exists()


@pytest.mark.parametrize("field", ["num_workers", "read_threads"])
def test_more_readers_than_any_host_runs_is_a_usage_error(capsys, field):
    """--config.data.num_workers=100000 had started hundreds of worker processes (~15 GB) that
    ignored SIGTERM and Ctrl-C. A dry run reads no data: were the cap gone, this would compile
    and exit 0, never start a reader."""
    _fails(pretrain, [f"--config={TINY}", "--dry_run", f"--config.data.{field}=100000"],
           capsys, f"flag --config.data.{field}=100000: expected an integer in [0, 256]", code=2)


def test_a_read_ahead_larger_than_the_memory_is_refused_before_any_work(tmp_path, capsys):
    """data.prefetch_buffer_size=10**8 had grown the process by ~150 MB/s without training a
    step, until the memory ran out."""
    workdir = tmp_path / "run"
    _fails(pretrain, [f"--config={TINY}", f"--workdir={workdir}", "--config.data.read_threads=2",
                      "--config.data.prefetch_buffer_size=1000000000",
                      "--config.data.synthetic_records=16"], capsys,
           "flag --config.data.prefetch_buffer_size=1000000000: the input pipeline would hold at "
           "least ", " GB of batches read ahead (1 reader x 1,000,000,000 batches of 8 ECGs, ",
           "GB of memory; expected fewer batches read ahead", code=2)
    assert not workdir.exists()


@pytest.mark.parametrize("override,said", [
    ("split=bogus", "flag --config.data.split='bogus': expected one of 'train', 'val', 'test' "
                    "or '' (every record)"),
    ("layout=nope", "flag --config.data.layout='nope': expected one of ['clinical_exports', "),
])
def test_an_unknown_split_or_layout_is_a_usage_error_naming_the_field(capsys, override, said):
    """A split had been refused as "no record of the data could be read (0 tried: the source
    is empty)" and a layout as --layout, a flag pretrain has not: both once the model was built,
    and neither by a dry run."""
    _fails(pretrain, [f"--config={TINY}", "--dry_run", f"--config.data.root={SAMPLE}",
                      f"--config.data.{override}"], capsys, said, code=2)


@pytest.mark.parametrize("override,expected", [
    ("optim.weight_decay=nan", "flag --config.optim.weight_decay=nan: expected a finite number"),
    ("optim.grad_clip_norm=nan",
     "flag --config.optim.grad_clip_norm=nan: expected a finite number"),
    ("data.seed=-1", "flag --config.data.seed=-1: expected an integer >= 0"),
])
def test_a_number_outside_its_domain_is_refused_before_any_work(tmp_path, override, expected):
    """A value set by an override is a usage error (exit 2) naming the flag."""
    done = _cli("pretrain", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                f"--config.{override}")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert (assert_one_error_line("pretrain", done.stdout, done.stderr)
            == f"crema-jax pretrain: error: {expected}")
    assert not (tmp_path / "run").exists()


def test_a_config_file_value_outside_its_domain_is_an_input_error(tmp_path):
    """The same value set in the config file: exit 1, the field named, no flag."""
    path = tmp_path / "bad.py"
    path.write_text(f"import importlib.util\nspec = importlib.util.spec_from_file_location("
                    f"'tiny', {TINY!r})\nbase = importlib.util.module_from_spec(spec)\n"
                    "spec.loader.exec_module(base)\n\n\ndef get_config():\n"
                    "    c = base.get_config()\n    c.data.seed = -1\n    return c\n")
    done = _cli("pretrain", f"--config={path}", f"--workdir={tmp_path / 'run'}")
    assert (_one_line(done, "pretrain")
            == "crema-jax pretrain: error: config.data.seed=-1: expected an integer >= 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value,expected", [
    ("optim.weight_decay", float("inf"), "a finite number"),
    ("optim.grad_clip_norm", -1.0, ">= 0 (0 = no clipping)"),
    ("optim.eps", 0.0, "> 0"),
    ("optim.betas", (0.9, 1.0), "two decay rates in [0, 1)"),
    ("optim.betas", (float("nan"), 0.95), "a finite number"),
    ("optim.min_lr", -1e-6, ">= 0"),
    ("loss.temperature", 0.0, "> 0"),
    ("loss.contrastive_weight", -0.1, ">= 0"),
    ("train.seed", -3, "an integer >= 0"),
    ("train.stop_after_steps", -1, "an integer >= 0"),
    ("data.num_workers", -2, "an integer in [0, 256]"),
    ("data.prefetch_buffer_size", 0, "an integer >= 1"),
    ("checkpoint.lock_stale_seconds", 0.0, "> 0"),
    ("mesh.fsdp", 0, "-1 (every device the other axes leave) or an integer >= 1"),
    ("model.drop_path", 1.0, "a rate in [0, 1)"),
    ("evals.fewshot_probe.label_fraction", 0.0, "a fraction in (0, 1]"),
    ("evals.fewshot_probe.l2_grid", (1.0, -1.0), "one or more penalties > 0"),
    ("data.augment.gaussian_noise.prob", 1.5, "a probability in [0, 1]"),
    ("data.augment.gaussian_noise.std", -0.05, ">= 0"),
    # Each below had passed: 1 Hz put every record past its filters' Nyquist limit (an endless
    # loop of skips), 1e9 Hz asked for 449 GiB a record, num_epochs=1 ended in a StopIteration
    # traceback, the augmentations failed after the compile naming no field.
    ("data.target_fs", 1.0, "a rate in Hz in [50, 10000]"),
    ("data.target_fs", 1e9, "a rate in Hz in [50, 10000]"),
    ("data.num_epochs", 1, "None for pretraining (an endless stream; train.num_steps ends the "
                           "run)"),
    ("data.augment.amplitude_scale.low", 3.0, "<= data.augment.amplitude_scale.high=1.2"),
    ("data.augment.baseline_wander.max_freq_hz", 0.01, ">= 0.05 Hz"),
    ("data.augment.baseline_wander.num_components", 100_000, "<= 64"),
    ("data.augment.time_shift.max_shift_s", 1e30, "<= 60.0"),
    # A crop of 0 or -75 samples (multiples of 75) had been refused as a mask ratio that
    # "leaves a patch visible (random_per_lead masking of -1 patches a lead)".
    ("data.crop_samples", 0, "a positive multiple of data.patch_size=75 (whole patches, at "
                             "least one a lead)"),
    ("data.crop_samples", -75, "a positive multiple of data.patch_size=75 (whole patches, at "
                               "least one a lead)"),
    ("data.crop_samples", 100, "a positive multiple of data.patch_size=75 (whole patches, at "
                               "least one a lead)"),
    ("data.patch_size", 0, "a whole number of samples >= 1"),
    ("data.mask.ratio", 0.99, "a ratio that leaves a patch visible (random_per_lead masking of "
                              "30 patches a lead: data.crop_samples=2250 / "
                              "data.patch_size=75)"),
])
def test_every_numeric_field_names_itself_when_out_of_domain(field, value, expected):
    config = config_lib.load_config_file(TINY)
    config_checks.validate(config)                             # the preset itself is valid
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    assert str(err.value) == f"config.{field}={value!r}: expected {expected}"


@pytest.mark.parametrize("field,value,expected", [
    ("optim.min_lr", 0.5, "expected <= the peak learning rate "),   # the rate had climbed
    ("optim.base_lr", 1e300, "expected a learning rate float32 holds"),  # a NaN checkpoint
])
def test_learning_rates_that_cannot_train_are_refused(field, value, expected):
    config = config_lib.load_config_file(TINY)
    section, name = field.split(".")
    config[section][name] = value
    peak = config.optim.base_lr * config.train.global_batch_size / 256
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    assert str(err.value).startswith(f"config.{field}={value!r}: {expected}")
    assert f"{peak:g}" in str(err.value)


def test_a_preset_renamed_by_an_override_is_refused(tmp_path):
    """--config.data.preset=ecgfounder on the crema path trained crema's path under the
    ecgfounder name (the fine-tuning recipe and the model card trust the name)."""
    done = _cli("pretrain", f"--config={TINY}", "--config.data.preset=ecgfounder",
                f"--workdir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr  # a flag's value: a usage error
    line = assert_one_error_line("pretrain", done.stdout, done.stderr)
    assert line.startswith("crema-jax pretrain: error: flag --config.data.preset='ecgfounder': "
                           "expected the data path whose fields this config holds; nan_policy="
                           "'interpolate' (ecgfounder: 'zero'), "), line
    assert not (tmp_path / "run").exists()


def test_an_unknown_augmentation_is_refused_with_the_config():
    """data.augment.names=('foo',) passed validation and --dry_run, and stopped the run only
    once data loading began, after the compile."""
    from crema_jax import config as config_lib
    from crema_jax import config_checks
    from crema_jax.data.signal.augment import AUGMENTS
    config = config_lib.load_config_file(str(REPO / "configs" / "crema_tiny.py"))
    config.data.augment.names = ("gaussian_noise",)
    config_checks.validate(config)
    config.data.augment.names = ("gaussian_noise", "foo")
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    assert str(err.value).startswith("config.data.augment.names=('gaussian_noise', 'foo'): "
                                     f"expected names among {sorted(AUGMENTS)}")


def test_a_mask_ratio_that_hides_every_patch_is_a_config_error():
    """0.999 passed validation and failed in the data pipeline with a message naming no field.
    By hand: ST-MEM's per-lead masking hides round(0.999 * 30) = 30 of 30 patches a lead."""
    from crema_jax import config_checks
    from tests.configs import tiny_config

    config = tiny_config()
    config.data.mask.ratio = 0.999
    patches = config.data.crop_samples // config.data.patch_size
    with pytest.raises(config_checks.ConfigValueError,
                       match=rf"config.data.mask.ratio=0.999: expected a ratio that leaves a "
                             rf"patch visible \(random_per_lead masking of {patches} patches"):
        config_checks.validate(config)
    config.data.mask.ratio = 0.9
    config_checks.validate(config)


@pytest.mark.parametrize("leads, said", [(("I", "I"), "I named twice"),
                                         (("V1", "II", "V1", "II"), "II+V1 named twice"),
                                         (("I", "X"), "expected names from")])
def test_a_lead_fed_twice_or_unknown_is_a_config_error(leads, said):
    """data.leads=('I', 'I') had passed: one row fed twice, under two lead embeddings."""
    from crema_jax import config_checks
    from tests.configs import tiny_config

    config = tiny_config()
    config.data.leads = leads
    with pytest.raises(ValueError, match=r"^config\.data\.leads=\(") as err:
        config_checks.validate(config)
    assert said in str(err.value)
    config.data.leads = ("V1", "II")
    config_checks.validate(config)


def test_leads_given_as_a_b_on_the_command_line_say_how_to_write_a_tuple(tmp_path, capsys):
    """--config.data.leads=I,II is ONE name 'I,II' to ml_collections: the refusal had named
    neither the flag nor the way to write two leads (a Python literal, which it parses)."""
    workdir = tmp_path / "run"
    _fails(pretrain, [f"--config={TINY}", f"--workdir={workdir}", "--config.data.leads=I,II",
                      "--config.data.synthetic_records=16"], capsys,
           "flag --config.data.leads=('I,II',): unknown leads ['I,II']; expected names from (",
           "; a tuple on the command line is a Python literal: "
           "--config.data.leads=\"('I','II')\"", code=2)
    assert not workdir.exists()
    args = pretrain.COMMAND.parse([f"--config={TINY}", f"--workdir={workdir}",
                                   "--config.data.leads=('I','II')"])   # the syntax it says
    assert args.config.data.leads == ("I", "II")
    config_checks.validate_data(args.config)


def test_synthetic_records_beside_a_named_dataset_is_a_config_error(tmp_path):
    """pretrain with data.synthetic_records=16 and data.root=/data had trained on synthetic
    ECGs, the root never read or named, exit 0."""
    from crema_jax import config_checks
    from tests.configs import tiny_config

    config = tiny_config(**{"data.synthetic_records": 16, "data.root": str(tmp_path)})
    with pytest.raises(config_checks.ConfigValueError) as refused:
        config_checks.validate(config)
    assert str(refused.value) == (
        f"config.data.synthetic_records=16: expected 0 when a dataset is named (data.root="
        f"{str(tmp_path)!r}, which synthetic records would leave unused): set "
        "data.synthetic_records=0 to train on it")
    config.data.synthetic_records = 0
    config_checks.validate(config)
    config = tiny_config(**{"data.synthetic_records": 16})
    config_checks.validate(config)  # synthetic records alone: the quick runs' data
