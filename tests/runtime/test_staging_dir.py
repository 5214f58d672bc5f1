"""staging.staging_dir: where a remote folder's local copy lives. Without CREMA_JAX_STAGING, in
a folder of the user's own in the temporary folder (two users reading one remote cache had
shared one predictable folder, and the second could not write it); a folder it cannot write
is one line naming CREMA_JAX_STAGING."""
import os
import stat
import tempfile

import pytest

from crema_jax.runtime import staging

URL = "memory://bucket/cache"


@pytest.fixture
def temp(tmp_path, monkeypatch):
    monkeypatch.delenv("CREMA_JAX_STAGING", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


def test_the_default_folder_is_the_user_s_own_and_closed_to_others(temp):
    folder = staging.staging_dir(URL, "cache")
    mine = temp / f"crema_jax-{os.getuid()}"
    assert os.path.dirname(folder) == str(mine) and os.path.isdir(folder)
    assert os.path.basename(folder).startswith("crema_jax-cache-")
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert staging.staging_dir(URL, "cache") == folder                  # the same on every call
    assert staging.staging_dir(URL + "2", "cache") != folder


def test_another_user_s_folder_at_the_user_s_name_is_refused_in_one_line(temp, monkeypatch):
    other = os.getuid() + 1
    (temp / f"crema_jax-{other}").mkdir()      # made by this (another) user, not by uid `other`
    monkeypatch.setattr(os, "getuid", lambda: other)
    with pytest.raises(PermissionError) as caught:
        staging.staging_dir(URL, "cache")
    message = str(caught.value)
    assert message.startswith(str(temp / f"crema_jax-{other}" / "crema_jax-cache-"))
    assert f"belongs to uid {os.stat(temp).st_uid}, not to this user (uid {other})" in message
    assert message.endswith("set CREMA_JAX_STAGING to a folder you can write")
    assert "\n" not in message


def test_a_link_planted_at_the_user_s_name_is_refused(temp, tmp_path_factory):
    target = tmp_path_factory.mktemp("elsewhere")
    os.symlink(target, temp / f"crema_jax-{os.getuid()}")
    with pytest.raises(PermissionError, match=r"crema_jax-\d+ is not a folder\); set "
                                              "CREMA_JAX_STAGING"):
        staging.staging_dir(URL, "cache")
    assert os.listdir(target) == []


def test_a_staging_folder_that_cannot_be_written_names_crema_jax_staging(tmp_path, monkeypatch):
    """As when two users share one CREMA_JAX_STAGING and the folder is the other's (simulated:
    the tests may run as root, whom no mode stops)."""
    monkeypatch.setenv("CREMA_JAX_STAGING", str(tmp_path))
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(
        str(tmp_path)) else real(path, mode))
    with pytest.raises(PermissionError) as caught:
        staging.staging_dir(URL, "cache")
    folder = str(caught.value).split(": ", 1)[0]
    assert os.path.dirname(folder) == str(tmp_path)
    assert str(caught.value) == (f"{folder}: cannot hold the local copy of {URL} (not writable "
                                 f"by uid {os.getuid()}); set CREMA_JAX_STAGING to a folder "
                                 "you can write")
