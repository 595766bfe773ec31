"""A DAG's scratch folder in the cloud is this user's own: a shared /tmp/tenfold made first by another user of the
host would let that user swap the challenger a run registers, or the model a drift run scores."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from tenfold.config import build_settings
from tenfold.pipelines import monitor_drift, train_model
from tenfold.pipelines.common import PipelineError, work_root


def test_the_cloud_work_root_is_a_0700_folder_of_this_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dev = build_settings("dev")
    root = train_model.work_root(dev)
    base = tmp_path / f"tenfold-{os.getuid()}"
    assert root == base / "train_model" and monitor_drift.work_root(dev) == base / "monitor_drift"
    assert stat.S_IMODE(base.stat().st_mode) == 0o700 and base.stat().st_uid == os.getuid()
    assert work_root(dev, "x") == base / "x"  # an existing folder of its own is used again

    local = build_settings("local", {"TENFOLD_HOME": str(tmp_path / "home")})
    assert train_model.work_root(local) == tmp_path / "home" / "runs" / "train_model"


@pytest.mark.parametrize("make", [
    lambda base: (base.mkdir(), base.chmod(0o777)),  # made by someone, open to everyone (what /tmp/tenfold could be)
    lambda base: base.symlink_to(base.parent),  # a link to a folder another user controls
])
def test_a_work_root_open_to_others_or_a_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         make) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    make(tmp_path / f"tenfold-{os.getuid()}")
    with pytest.raises(PipelineError, match=r"is not a folder of this user's own .*remove it"):
        train_model.work_root(build_settings("dev"))


def test_the_tasks_after_plan_check_the_work_root_on_their_own_host(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """plan checked the folder on its worker; evaluate and register (on another Composer worker) took the path from
    XCom as they found it there, a folder another user of that host may have made open to everyone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dev = build_settings("dev")
    from types import SimpleNamespace

    run = SimpleNamespace(run_key="r1")  # what it reads of the planned run
    assert train_model._work_dir(dev, run) == tmp_path / f"tenfold-{os.getuid()}" / "train_model" / "r1"
    (tmp_path / f"tenfold-{os.getuid()}").chmod(0o777)  # the other host's: made open to everyone
    with pytest.raises(PipelineError, match="is not a folder of this user's own"):
        train_model._work_dir(dev, run)
