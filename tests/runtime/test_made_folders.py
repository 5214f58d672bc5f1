"""runtime/made_folders: the folders a run made are removed only when it wrote nothing there."""
import os

from crema_jax.runtime import made_folders


def test_to_make_lists_the_missing_folders_deepest_first(tmp_path):
    (tmp_path / "have").mkdir()
    target = tmp_path / "have" / "a" / "b"
    assert made_folders.to_make(target) == [str(target), str(tmp_path / "have" / "a")]
    assert made_folders.to_make(tmp_path / "have") == []
    assert made_folders.to_make("gs://bucket/run") == []


def test_an_empty_tree_is_removed_with_the_parents_made(tmp_path):
    made = made_folders.to_make(tmp_path / "a" / "b")
    os.makedirs(tmp_path / "a" / "b" / "checkpoints" / "tmp")   # what the run made inside
    made_folders.remove_if_empty(made)
    assert os.listdir(tmp_path) == []


def test_a_file_anywhere_keeps_every_folder(tmp_path):
    made = made_folders.to_make(tmp_path / "a" / "b")
    os.makedirs(tmp_path / "a" / "b" / "checkpoints")
    (tmp_path / "a" / "b" / "checkpoints" / "x.txt").write_text("kept")
    made_folders.remove_if_empty(made)
    assert (tmp_path / "a" / "b" / "checkpoints" / "x.txt").read_text() == "kept"


def test_a_file_beside_in_a_made_parent_keeps_that_parent(tmp_path):
    made = made_folders.to_make(tmp_path / "a" / "b")
    os.makedirs(tmp_path / "a" / "b")
    (tmp_path / "a" / "other.txt").write_text("someone else's")
    made_folders.remove_if_empty(made)
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a" / "other.txt").read_text() == "someone else's"


def test_a_link_inside_keeps_the_tree_and_its_target(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    made = made_folders.to_make(tmp_path / "a")
    (tmp_path / "a").mkdir()
    os.symlink(target, tmp_path / "a" / "link")
    made_folders.remove_if_empty(made)
    assert (tmp_path / "a" / "link").is_symlink() and target.is_dir()


def test_a_folder_that_existed_before_is_never_removed(tmp_path):
    (tmp_path / "mine").mkdir()
    made = made_folders.to_make(tmp_path / "mine" / "run")
    (tmp_path / "mine" / "run").mkdir()
    made_folders.remove_if_empty(made)
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]
    assert list((tmp_path / "mine").iterdir()) == []
