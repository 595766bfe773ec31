"""A write that the system refuses (a read-only folder, a directory where the file goes, a missing folder, a name too
long, a full disk) is refused naming the file or folder the caller gave, never the random hidden temporary name it
was being written under; and a long but valid file name is written like any other."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from tenfold.fsio import atomic_write, write_file_atomically
from tenfold.outages import ending
from tenfold.storage import FileObjects


def _said(exc: BaseException, home: Path) -> str:
    return ending(exc, "tenfold x", home, debug_hint="with TENFOLD_DEBUG=1")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_directory_where_the_file_goes_is_named_not_the_tmp(tmp_path: Path) -> None:
    """Said as "Is a directory: <folder>/.adir.tmp-eb577242", a file that never existed for the user."""
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as refused:
        atomic_write(target, b"{}")
    assert refused.value.filename == str(target) and refused.value.errno == errno.EISDIR
    line = _said(refused.value, tmp_path / "home")
    assert f"Is a directory: {target};" in line and ".tmp-" not in line, line
    assert _hidden(tmp_path) == []  # no tmp left behind


def test_a_read_only_folder_is_named_not_the_tmp(tmp_path: Path, unwritable: Any) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "results").mkdir()
    with unwritable(folder):
        with pytest.raises(PermissionError) as refused:
            atomic_write(folder / "x.json", b"{}")
        assert refused.value.filename == str(folder)
        line = _said(refused.value, tmp_path / "home")
        assert f": {folder};" in line and ".tmp-" not in line, line
        for op in ("create", "put"):  # the record store's writes, which make their own tmp
            with pytest.raises(PermissionError) as refused:
                getattr(FileObjects(tmp_path), op)("ro/y.json", b"{}")
            assert refused.value.filename == str(folder), op
            assert ".tmp-" not in _said(refused.value, tmp_path / "home")
    assert sorted(p.name for p in folder.iterdir()) == ["results"]


def test_a_missing_folder_is_named_not_the_tmp(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as refused:
        atomic_write(tmp_path / "gone" / "x.json", b"{}")
    assert refused.value.filename == str(tmp_path / "gone")
    line = _said(refused.value, tmp_path / "home")
    assert f"No such file or directory: {tmp_path / 'gone'};" in line and ".tmp-" not in line, line


@pytest.mark.parametrize("length", [242, 250, 255])
def test_a_long_valid_file_name_is_written(tmp_path: Path, length: int) -> None:
    """The tmp name adds 14 characters: a target of 242 to 255 failed with "File name too long"."""
    name = "n" * (length - 5) + ".json"
    atomic_write(tmp_path / name, b"1")
    assert (tmp_path / name).read_bytes() == b"1"
    objects = FileObjects(tmp_path / "objects")
    assert objects.create(f"r/{name}", b"2") and objects.get(f"r/{name}") == b"2"
    objects.put(f"r/{name}", b"3")
    assert objects.get(f"r/{name}") == b"3" and objects.names("r") == [name]
    (tmp_path / "arrow").mkdir()
    write_file_atomically(pafs.LocalFileSystem(), str(tmp_path / "arrow" / name), b"4")
    assert (tmp_path / "arrow" / name).read_bytes() == b"4"
    for folder in (tmp_path, tmp_path / "objects" / "r", tmp_path / "arrow"):
        assert _hidden(folder) == [], folder


def test_a_name_too_long_for_any_file_is_refused_naming_it(tmp_path: Path) -> None:
    """256 bytes: the rename (or the record store's link) is what fails, and it names the target."""
    target = tmp_path / ("n" * 256)
    with pytest.raises(OSError) as refused:
        atomic_write(target, b"{}")
    assert refused.value.errno == errno.ENAMETOOLONG and refused.value.filename == str(target)
    with pytest.raises(OSError) as refused:
        FileObjects(tmp_path).create("n" * 256, b"{}")
    assert refused.value.errno == errno.ENAMETOOLONG and refused.value.filename == str(target)
    assert ".tmp-" not in _said(refused.value, tmp_path / "home")
    assert _hidden(tmp_path) == []


def test_a_full_disk_is_said_as_a_full_disk_not_a_tmp(small_disk: Any) -> None:
    small_disk.fill(leave=8 * 1024)
    target = small_disk.path / "x.json"
    with pytest.raises(OSError) as refused:
        atomic_write(target, os.urandom(64 * 1024))
    assert refused.value.errno == errno.ENOSPC
    line = _said(refused.value, small_disk.path)
    assert "No space left on device" in line and "free space" in line and ".tmp-" not in line, line
    assert _hidden(small_disk.path) == []


def test_a_file_where_the_folder_should_be_is_named_not_the_tmp(tmp_path: Path) -> None:
    """The clean-up of the temporary name met the same file in the way (ENOTDIR) and its error replaced the one
    naming the folder."""
    in_the_way = tmp_path / "results"
    in_the_way.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError) as refused:
        atomic_write(in_the_way / "x.json", b"{}")
    assert refused.value.filename == str(in_the_way), refused.value.filename
    assert ".tmp-" not in _said(refused.value, tmp_path / "home")


def test_a_folder_in_the_way_of_a_result_is_refused_not_taken_for_the_result(tmp_path: Path) -> None:
    """The record store's link refuses any existing name: a folder in the way of a result (a user's mkdir, a copy of a
    run folder gone wrong) made `create` answer "it exists", and the caller acknowledged the message whose result
    was never written. A result of another writer (a file) is still "it exists"."""
    objects = FileObjects(tmp_path)
    (tmp_path / "run" / "results" / "7.parquet").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as refused:
        objects.create("run/results/7.parquet", b"result")
    assert refused.value.filename == str(tmp_path / "run" / "results" / "7.parquet")
    assert "a folder is in the way" in _said(refused.value, tmp_path / "home")
    assert _hidden(tmp_path / "run" / "results") == [] and not objects.exists("run/results/7.parquet")
    assert objects.names("run/results") == []  # nor listed as one: the run's accounting called it scored
    assert objects.create("run/results/8.parquet", b"first") and not objects.create("run/results/8.parquet", b"second")
    assert objects.get("run/results/8.parquet") == b"first"
