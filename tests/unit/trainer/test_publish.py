"""Publishing an artifact folder: it appears whole, replaces or keeps what is there, and leaves
no scratch folders behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeloop.trainer import output


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_new_folder_appears_whole_without_leftovers(tmp_path):
    staged = folder(tmp_path / "staged", data="1", meta="m")
    output.publish(staged, str(tmp_path / "out" / "x"), last="meta")
    assert contents(tmp_path / "out" / "x") == {"data": "1", "meta": "m"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x"]


def test_replace_swaps_the_whole_folder(tmp_path):
    target = folder(tmp_path / "out", old="o", meta="old")
    output.publish(folder(tmp_path / "staged", meta="new"), str(target), last="meta")
    assert contents(target) == {"meta": "new"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_complete_content_addressed_folder_is_kept(tmp_path):
    target = folder(tmp_path / "out", data="theirs", meta="theirs")
    staged = folder(tmp_path / "staged", data="mine", meta="mine")
    output.publish(staged, f"file://{target}", last="meta", replace=False)
    assert contents(target) == {"data": "theirs", "meta": "theirs"}
    # Without the file that marks it complete, the folder is replaced.
    (target / "meta").unlink()
    output.publish(staged, str(target), last="meta", replace=False)
    assert contents(target) == {"data": "mine", "meta": "mine"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_file_in_the_way_is_left_alone(tmp_path):
    (tmp_path / "out").write_text("precious")
    with pytest.raises(FileExistsError):
        output.publish(folder(tmp_path / "staged", meta="m"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "precious"
