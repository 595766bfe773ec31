"""A worker's output folder given as a URI (:class:`tenfold.training.remote.RemoteDir`): its writes on a real full
disk."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from tenfold.training.remote import RemoteDir


def test_a_write_that_meets_a_full_disk_leaves_no_tmp_behind(small_disk: Any) -> None:
    """``file://`` output on a disk that fills: each try's half-written ``<name>.tmp-xxxxxxxx`` stayed in the folder
    for good (nothing removes it, and a checkpoint mirrored every few steps made one each time)."""
    remote = RemoteDir(small_disk.path.as_uri())
    small_disk.fill(leave=16 * 1024)
    with pytest.raises(OSError) as failed:
        remote.write_bytes("train_config.json", os.urandom(64 * 1024))
    assert failed.value.errno == errno.ENOSPC, failed.value
    assert sorted(os.listdir(small_disk.path)) == ["filler"]  # no tmp, no torn train_config.json

    small_disk.free()  # once there is room, the same write lands whole, and only it
    body = os.urandom(64 * 1024)
    remote.write_bytes("train_config.json", body)
    assert sorted(os.listdir(small_disk.path)) == ["train_config.json"]
    assert remote.read_bytes("train_config.json") == body
