"""preview: an unknown --mask, a --mask_ratio that hides every patch, an --out in a missing folder
(made) or where no file can be written. Each refusal is one line naming the flag."""
import sys

import pytest


def test_preview_names_its_mask_flag_and_makes_the_out_folder(tmp_path, capsys):
    """--mask=bogus named config field data.mask.name; --out in a missing folder was an
    errno line naming no flag (embed makes the folder)."""
    from crema_jax.cli import preview
    from tests.cli.conftest import assert_one_error_line

    with pytest.raises(SystemExit) as exit_info:
        preview.COMMAND.run([f"--out={tmp_path / 'a.png'}", "--mask=bogus"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert assert_one_error_line("preview", captured.out, captured.err) == (
        "crema-jax preview: error: --mask=bogus: expected one of ['lead_drop', 'random_global', "
        "'random_per_lead', 'time_block']")
    out = tmp_path / "new" / "folder" / "p.png"
    preview.COMMAND.run([f"--out={out}"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.png"]   # no temporary left


@pytest.mark.parametrize("flags, said", [
    (["--mask_ratio=0.999"], "flag --mask_ratio=0.999: expected a ratio that leaves a patch "
     "visible (random_per_lead masking of 30 patches a lead hides them all); lower it"),
    (["--mask=time_block", "--mask_ratio=0.99"], "flag --mask_ratio=0.99: expected a ratio that "
     "leaves a patch visible (time_block masking of 30 patches a lead hides them all); lower it"),
])
def test_preview_names_its_mask_ratio_when_it_hides_every_patch(tmp_path, capsys, flags, said):
    """Both had been 'mask ... leaves no visible patch; lower the ratio', exit 1, naming no
    flag, where --mask_ratio=1 is a flag error."""
    from crema_jax.cli import preview
    from tests.cli.conftest import _fails

    line = _fails(preview, [f"--out={tmp_path / 'p.png'}", *flags], capsys, code=2)
    assert line == f"crema-jax preview: error: {said}"
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_preview_names_an_out_it_cannot_write(capsys):
    """It was '[Errno 2] cannot write /proc/x.png: No such file or directory', naming no flag
    and no remedy."""
    from crema_jax.cli import preview
    from tests.cli.conftest import _fails

    line = _fails(preview, ["--out=/proc/x.png"], capsys)
    assert line == ("crema-jax preview: error: --out=/proc/x.png: cannot write the PNG there (No "
                    "such file or directory); choose a path in a folder you can write to")
