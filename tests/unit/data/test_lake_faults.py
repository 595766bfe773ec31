"""A publisher SIGKILLed at every step of a publish over a published partition: readers see the old or the new.

The harness: a child process publishes new content over an already-published partition through
:class:`PausingFileSystem`, the real local filesystem with a pause point before every change it makes
(create a folder, copy, move, delete) and in the middle of every byte stream it writes (so a half-written
temporary file is on disk when it stops). For point ``k`` the child runs the real ``Lake.publish`` up to
that point, tells the test it is paused, and the test sends it a real ``os.kill(pid, SIGKILL)``; then a
fresh ``Lake`` reads the partition. ``k`` runs from 1 until the child finishes the publish without
pausing, so the kills cover every step of the whole publish by construction (not by timing guesses);
the test checks there are at least 20.

Forking is what keeps ~30 kills in a few seconds: a "zygote" process (this file run as a script)
imports pyarrow and the lake once, single-threaded, and forks one child per point. The test still
kills the forked child by its pid, from outside.

The harness checks itself: the same sweep runs two deliberately broken publishers (the manifest
committed before the data, and the data overwritten in place) and must catch both.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tenfold.data.lake import MANIFEST, PUBLISH_LOCK, REFUSING, FileEntry, Lake, Manifest, Partition

TABLE = "trips"
PART = Partition(2013, 6)
FILES = 5  # 5 files: 4 pause points each, then the manifest and the clean-up (about 25 points in all)
ROWS_PER_FILE = 200
CHILD_WAIT_S = 120.0  # a paused child that is never killed (the test died) exits on its own after this


def content(version: int) -> list[pa.Table]:
    """The files of one version of the partition (old = 1, new = 2): same schema, different rows."""
    # From numpy: converting Python lists would import pandas, seconds that this test does not need.
    return [
        pa.table({"trip": np.arange(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE, dtype=np.int64),
                  "version": np.full(ROWS_PER_FILE, version, dtype=np.int32)})
        for f in range(FILES)
    ]


@functools.cache
def whole(version: int) -> pa.Table:
    return pa.concat_tables(content(version))


# --- the child side: a filesystem that pauses, and the publishers ------------------------------------------


class _Paused(Exception):
    pass


class PausingFileSystem(pafs.FileSystemHandler):
    """The local filesystem with numbered pause points before every change and inside every write."""

    def __init__(self, pause_at: int, notify: int) -> None:
        self.fs = pafs.LocalFileSystem()
        self.pause_at, self.notify, self.points = pause_at, notify, 0

    def point(self, label: str) -> None:
        self.points += 1
        if self.points != self.pause_at:
            return
        os.write(self.notify, (json.dumps({"paused": self.points, "at": label}) + "\n").encode())
        deadline = time.monotonic() + CHILD_WAIT_S
        while time.monotonic() < deadline:  # waiting to be SIGKILLed; never returns to the publish
            time.sleep(0.05)
        os._exit(3)

    # changes: a pause point before each
    def create_dir(self, path: str, recursive: bool) -> None:
        self.point(f"create_dir {path}")
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.point(f"delete_dir {path}")
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.point(f"delete_dir_contents {path}")
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError("a publish never empties the root")

    def delete_file(self, path: str) -> None:
        self.point(f"delete_file {path}")
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.point(f"move {src} -> {dest}")
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.point(f"copy_file {src} -> {dest}")
        with self.fs.open_input_stream(src) as source:
            data = source.read()
        with self.fs.open_output_stream(dest) as out:
            out.write(data[: len(data) // 2])
            out.flush()
            self.point(f"copy_file half written {dest}")
            out.write(data[len(data) // 2:])

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        self.point(f"open_output_stream {path}")
        return pa.PythonFile(_HalfwayPause(self, self.fs.open_output_stream(path), path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        raise NotImplementedError("a publish never appends")

    # reads: no pause points (they change nothing a reader could see)
    def get_type_name(self) -> str:
        return "pausing-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def equals(self, other: Any) -> bool:
        return self is other

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)


class _HalfwayPause:
    """An output stream that pauses once half of each write is flushed to the file."""

    def __init__(self, fs: PausingFileSystem, stream: pa.NativeFile, path: str) -> None:
        self.fs, self.stream, self.path, self.closed = fs, stream, path, False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.stream.write(view[: len(view) // 2])
        self.stream.flush()
        self.fs.point(f"write half written {self.path}")
        self.stream.write(view[len(view) // 2:])
        return len(view)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()
        self.closed = True


class ManifestBeforeData(Lake):
    """Deliberately broken: commits the new manifest first, then lands the files it lists."""

    def _land(self, source: str, dest: str, entry: FileEntry) -> None:
        self.__dict__.setdefault("_deferred", []).append((source, dest, entry))

    def _commit(self, manifest: Manifest) -> None:
        super()._commit(manifest)
        for args in self.__dict__.pop("_deferred", []):
            super()._land(*args)


class OverwriteInPlace(Lake):
    """Deliberately broken: writes the new files straight over those the visible manifest lists."""

    def _data_dir_name(self, table: str, part: Partition, entries: list[FileEntry]) -> str:
        current = self._current_manifest(table, part)
        return current.data_dir if current is not None else super()._data_dir_name(table, part, entries)

    def _land(self, source: str, dest: str, entry: FileEntry) -> None:
        self.fs.copy_file(source, dest)


PUBLISHERS: dict[str, type[Lake]] = {"correct": Lake, "manifest_first": ManifestBeforeData,
                                     "in_place": OverwriteInPlace}


WITHDRAW_KEY = "refused-run"
WITHDRAW_REASON = {"why": "refused by the test"}


def _child(command: dict[str, Any], notify: int) -> None:
    pausing = PausingFileSystem(command["pause_at"], notify)
    lake = PUBLISHERS[command["variant"]](Path(command["lake"]).as_uri(), filesystem=pafs.PyFileSystem(pausing))
    if "withdraw" in command:  # a reader's withdrawal of the data folder it found corrupt
        lake.withdraw(TABLE, PART, WITHDRAW_KEY, WITHDRAW_REASON, data_dir=command["withdraw"])
    else:
        lake.publish(TABLE, PART, command["staged"], run_id="new")
    os.write(notify, (json.dumps({"done": pausing.points}) + "\n").encode())


def _threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def _zygote() -> None:
    """Read one command per line; fork a child per command; report its event, then how it ended."""
    out = sys.stdout
    for line in sys.stdin:
        command = json.loads(line)
        if (threads := _threads()) != 1:  # forking a process with other threads can deadlock the child
            out.write(json.dumps({"error": f"the zygote runs {threads} threads; fork is unsafe"}) + "\n")
            out.flush()
            continue
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: publish, never return into this loop
            os.close(r)
            try:
                _child(command, w)
                code = 0
            except BaseException as exc:  # reported to the test, which fails naming it
                os.write(w, (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
                code = 1
            os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as events:
            event = json.loads(events.readline() or b'{"error": "the child ended without a word"}')
        out.write(json.dumps({"pid": pid, "event": event}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"code": os.WEXITSTATUS(status)}
        out.write(json.dumps({"pid": pid, **ended}) + "\n")
        out.flush()


# --- the test side ---------------------------------------------------------------------------------------


class Zygote:
    def __init__(self, log: Path) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               # pyarrow's jemalloc otherwise starts a background thread, and fork needs a single thread
               "JE_ARROW_MALLOC_CONF": "background_thread:false"}
        self._log = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env)
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The zygote's next line, waiting for it up to a deadline (zygote start-up included)."""
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise AssertionError(f"the zygote said nothing for {timeout_s:.0f} s; see {self._log.name}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the zygote exited ({self.proc.wait()}); see {self._log.name}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@dataclass
class Sweep:
    outcomes: list[tuple[int, str, str]] = field(default_factory=list)  # (point, where it paused, what a reader saw)
    points: int = 0  # pause points in a whole publish

    @property
    def violations(self) -> list[tuple[int, str, str]]:
        return [o for o in self.outcomes if o[2] not in ("old", "new")]

    def table(self) -> str:
        return "\n".join(f"  {k:3d}  {seen:<5.60s}  {at}" for k, at, seen in self.outcomes)


def observe(lake_dir: Path) -> str:
    """What a fresh reader sees: 'old', 'new', 'mix', or the error it got."""
    lake = Lake(lake_dir.as_uri())
    try:
        got = lake.read_table(TABLE, [PART])
        lake.files(TABLE, PART, verify=True)
    except Exception as exc:  # any error is a finding, reported with its message
        return f"error: {type(exc).__name__}: {exc}"
    for name, version in (("old", 1), ("new", 2)):
        if got.equals(whole(version)):
            return name
    return f"mix: versions {sorted(set(got.column('version').to_pylist()))}, {got.num_rows} rows"


def _stage(folder: Path, version: int) -> Path:
    folder.mkdir(parents=True)
    for n, t in enumerate(content(version)):
        pq.write_table(t, folder / f"part-{n:05d}.parquet")
    return folder


def _assert_only_the_published(lake_dir: Path, where: str) -> None:
    """The partition folder holds the manifest, the writer lock and the one data folder the manifest names, which holds
    exactly the files it lists: no half-written ``.tmp-`` file or replaced folder that a killed publish left behind
    (readers never see them, so only a listing shows the clean-up skipped them)."""
    lake = Lake(lake_dir.as_uri())
    manifest = lake.read_manifest(TABLE, PART)
    folder = Path(lake.partition_path(TABLE, PART))
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, PUBLISH_LOCK, manifest.data_dir]), where
    assert sorted(p.name for p in (folder / manifest.data_dir).iterdir()) == sorted(f.name for f in manifest.files), \
        where


def sweep(zygote: Zygote, variant: str, work: Path, *, stop_at_first_violation: bool = False,
          retry: bool = False) -> Sweep:
    """Kill a publish of version 2 over version 1 at every pause point in turn; a fresh lake copy for each."""
    template = work / "template"
    if not template.exists():
        Lake(template.as_uri()).publish(TABLE, PART, str(_stage(work / "staged-old", 1)), run_id="old")
        _stage(work / "staged-new", 2)
    staged = str(work / "staged-new")
    result = Sweep()
    for k in range(1, 500):
        lake_dir = work / f"{variant}-{k}"
        shutil.copytree(template, lake_dir)
        zygote.send({"lake": str(lake_dir), "staged": staged, "variant": variant, "pause_at": k})
        reply = zygote.receive()
        assert "pid" in reply, f"point {k}: {reply}"
        pid, event = reply["pid"], reply["event"]
        if "paused" in event:
            os.kill(pid, signal.SIGKILL)
        ended = zygote.receive()
        assert ended["pid"] == pid
        if "done" in event:  # k is past the last pause point: the publish ran to its end
            assert ended == {"pid": pid, "code": 0}
            result.points = event["done"]
            assert observe(lake_dir) == "new", "a whole publish must show the new content"
            break
        assert "paused" in event, f"point {k}: the child failed before pausing: {event}"
        assert ended == {"pid": pid, "signal": signal.SIGKILL}, f"point {k}: the child was not SIGKILLed: {ended}"
        seen = observe(lake_dir)
        result.outcomes.append((k, event["at"].replace(str(lake_dir), "<lake>").replace(staged, "<staged>"), seen))
        if retry and seen in ("old", "new"):  # the task's retry: the same publish again, unkilled
            Lake(lake_dir.as_uri()).publish(TABLE, PART, staged, run_id="retry")
            assert observe(lake_dir) == "new", f"point {k}: a retry after the kill did not publish the new content"
            _assert_only_the_published(lake_dir, f"point {k} ({result.outcomes[-1][1]}): after the retry")
        shutil.rmtree(lake_dir)
        if stop_at_first_violation and result.violations:
            break
    return result


def test_a_reader_racing_a_publish_reads_one_whole_partition(tmp_path: Path) -> None:
    # A publish lands between a reader's manifest and its first file, and removes the folder that manifest
    # names: the reader must end up with one whole partition, not a missing-file error.
    Lake(tmp_path.as_uri()).publish(TABLE, PART, str(_stage(tmp_path / "staged-old", 1)), run_id="old")
    staged_new = str(_stage(tmp_path / "staged-new", 2))

    class RacedReader(Lake):
        raced = False

        def _read_verified(self, *args: Any) -> bytes:
            if not self.raced:
                self.raced = True
                Lake(self.uri).publish(TABLE, PART, staged_new, run_id="new")
            return super()._read_verified(*args)

    reader = RacedReader(tmp_path.as_uri())
    assert reader.read_table(TABLE, [PART]).equals(whole(2))
    assert reader.raced


def test_a_publish_flushes_its_data_to_disk_before_the_manifest_names_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was fsynced: after a power loss (not only a crash) the renamed manifest could reach the disk before
    the new files it names (zero-length), with the month they replaced already removed."""
    lake = Lake((tmp_path / "lake").as_uri())
    lake.publish(TABLE, PART, str(_stage(tmp_path / "staged-old", 1)), run_id="old")
    flushed: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    manifest = lake.publish(TABLE, PART, str(_stage(tmp_path / "staged-new", 2)), run_id="new")
    part = Path(lake.partition_path(TABLE, PART))
    data = [str(part / manifest.data_dir / f.name) for f in manifest.files]
    manifest_write = next(i for i, p in enumerate(flushed) if Path(p).name.startswith("_SUCCESS.tmp-"))
    for i, path in enumerate(flushed[:manifest_write]):  # data files fsynced under their temporary names
        flushed[i] = next((d for d in data if path.startswith(f"{d}.tmp-")), path)
    assert set(data) <= set(flushed[:manifest_write]), flushed  # every file on disk before the manifest
    assert str(part / manifest.data_dir) in flushed[:manifest_write]  # and its folder's entries (the renames)
    assert flushed[-1] == str(part)  # the manifest's rename, last


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.log")
    try:
        yield z
    finally:
        z.close()


def test_a_publisher_killed_at_any_step_leaves_the_old_or_the_new_partition(zygote: Zygote, tmp_path: Path) -> None:
    result = sweep(zygote, "correct", tmp_path, retry=True)
    report = f"point, what a reader saw, where the publisher was killed:\n{result.table()}"
    assert result.points >= 20, report
    assert [k for k, _, _ in result.outcomes] == list(range(1, result.points + 1)), report  # every point, in order
    assert result.violations == [], report
    # Old up to the manifest's rename, new from the next point on: the rename is the one commit step.
    seen = [outcome for _, _, outcome in result.outcomes]
    switch = seen.index("new")
    assert seen == ["old"] * switch + ["new"] * (len(seen) - switch), report
    assert result.outcomes[switch - 1][1].startswith("move ") and result.outcomes[switch - 1][1].endswith("/_SUCCESS"), \
        report
    # Kills landed with half-written temporary files on disk, in the data and in the manifest.
    halfway = [at for _, at, _ in result.outcomes if "half written" in at]
    assert any("parquet.tmp-" in at for at in halfway) and any("_SUCCESS.tmp-" in at for at in halfway), report


def _quarantined(lake_dir: Path, reason_file: str = "_QUARANTINED.json") -> dict[str, tuple[str, Any, Any]]:
    """What the partition's quarantine holds: per folder, the data's version (or "no data") and its reason file's
    "why" and withdrawn manifest's run id (None where the folder has no reason file). ``reason_file``: the refusal
    marker (``_REFUSING.json``) instead, which holds the reason under "reason"."""
    lake = Lake(lake_dir.as_uri())
    root = Path(lake.quarantine_path(TABLE, PART, "x")).parent
    found: dict[str, tuple[str, Any, Any]] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        files = sorted(folder.glob("*.parquet"))
        data = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
        seen = next((name for name, v in (("old", 1), ("new", 2)) if data is not None and data.equals(whole(v))),
                    "no data" if data is None else f"part of it: {data.num_rows} rows")
        reason = json.loads((folder / reason_file).read_text()) if (folder / reason_file).exists() else None
        if reason is not None and reason_file == REFUSING:
            reason = reason["reason"]
        found[folder.name] = (seen, reason and reason.get("why"),
                              reason and reason.get("manifest") and json.loads(reason["manifest"])["run_id"])
    return found


def _kill_withdrawal(zygote: Zygote, template: Path, lake_dir: Path, k: int, withdrawn: str) -> dict[str, Any]:
    """A copy of ``template`` at ``lake_dir`` whose withdrawal of ``withdrawn`` was SIGKILLed at point ``k``; returns
    the child's event (``done`` when ``k`` is past the last point and it ran to its end)."""
    shutil.copytree(template, lake_dir)
    zygote.send({"lake": str(lake_dir), "variant": "correct", "pause_at": k, "withdraw": withdrawn})
    reply = zygote.receive()
    pid, event = reply["pid"], reply["event"]
    if "paused" in event:
        os.kill(pid, signal.SIGKILL)
    ended = zygote.receive()
    expected = {"pid": pid, "code": 0} if "done" in event else {"pid": pid, "signal": signal.SIGKILL}
    assert ("paused" in event or "done" in event) and ended == expected, f"point {k}: {event} {ended}"
    return dict(event)


def test_a_withdrawal_killed_at_any_step_keeps_the_batch_and_its_reason(zygote: Zygote, tmp_path: Path) -> None:
    """A withdrawal removed the manifest, then wrote the verdict and moved the data folder: killed in between, the
    folder stayed unnamed in the partition and the manifest's text (the only record of what was withdrawn) was gone;
    the retry found no manifest and moved nothing, and the next publish deleted the folder. Killed at every step,
    the retry must leave the withdrawn rows in quarantine with their reason (_QUARANTINED.json), and the next publish
    must keep them: in quarantine with that reason, or, killed after the whole folder had moved but before the reason
    was written, in quarantine with the verdict it carried (_REFUSING.json), which the withdrawal's retry finishes."""
    template = tmp_path / "template"
    withdrawn = Lake(template.as_uri()).publish(TABLE, PART, str(_stage(tmp_path / "staged-old", 1)),
                                                run_id="old").data_dir
    staged_new = str(_stage(tmp_path / "staged-new", 2))
    kept = {WITHDRAW_KEY: ("old", WITHDRAW_REASON["why"], "old")}
    unpublished_at: list[str] = []
    marked_at: list[str] = []  # where the kill left the verdict (_REFUSING.json) on disk
    for k in range(1, 100):
        # The withdrawal's retry (the reader's, naming the folder it found corrupt) finishes it.
        retried = tmp_path / f"retried-{k}"
        event = _kill_withdrawal(zygote, template, retried, k, withdrawn)
        if "done" in event:  # past the last pause point: the withdrawal ran to its end
            assert _quarantined(retried) == kept and not Lake(retried.as_uri()).has_manifest(TABLE, PART)
            break
        at = event["at"].replace(str(retried), "<lake>")
        if not Lake(retried.as_uri()).has_manifest(TABLE, PART):
            unpublished_at.append(at)
        Lake(retried.as_uri()).withdraw(TABLE, PART, WITHDRAW_KEY, WITHDRAW_REASON, data_dir=withdrawn)
        assert _quarantined(retried) == kept, f"point {k} ({at}): after the retry"
        assert not Lake(retried.as_uri()).has_manifest(TABLE, PART)

        # No retry, the month published again instead: the withdrawn rows are not deleted as an earlier publish's.
        killed = tmp_path / f"killed-{k}"
        _kill_withdrawal(zygote, template, killed, k, withdrawn)
        still_published = Lake(killed.as_uri()).has_manifest(TABLE, PART)
        marked = any(killed.rglob(REFUSING))  # the verdict on disk: in the data folder, or moved with it to quarantine
        if marked:
            marked_at.append(at)
        Lake(killed.as_uri()).publish(TABLE, PART, staged_new, run_id="next")
        assert observe(killed) == "new", f"point {k} ({at})"
        # A kill before the verdict was written left the month published, and the publish replaced it as usual. Once
        # the verdict is written, even with the manifest still there, the publish's clean-up must move the folder to
        # quarantine with its reason, never delete it with its evidence; a kill after the whole folder moved left its
        # reason in the quarantine folder's _REFUSING.json (the retry finishes it).
        quarantined = _quarantined(killed)
        if marked:
            assert quarantined == kept or (not still_published and quarantined == {WITHDRAW_KEY: ("old", None, None)}
                                           and _quarantined(killed, REFUSING) == kept), \
                f"point {k} ({at}): the verdict was written, and after the next publish: {quarantined}"
        else:
            assert still_published and quarantined == {}, f"point {k} ({at}): after the next publish: {quarantined}"
        shutil.rmtree(killed)
        shutil.rmtree(retried)
    else:
        pytest.fail("the withdrawal never finished")
    # The kills covered the gap the finding was about (each point pauses before its step): the manifest removed, the
    # data folder not moved yet.
    assert unpublished_at and unpublished_at[0].startswith(f"move <lake>/trips/year=2013/month=6/{withdrawn} -> "), \
        unpublished_at
    # And the one where only the verdict tells the next publish's clean-up that the folder is withdrawn: written, the
    # manifest not removed yet.
    assert marked_at and marked_at[0] == "delete_file <lake>/trips/year=2013/month=6/_SUCCESS", marked_at
    assert k >= 10, k


@pytest.mark.parametrize(
    ("variant", "finding"),
    [("manifest_first", "listed by its manifest, is missing"), ("in_place", "is corrupt")],
)
def test_the_harness_catches_a_deliberately_broken_publisher(
    zygote: Zygote, tmp_path: Path, variant: str, finding: str
) -> None:
    # The harness's self-check: these publishers break atomicity, and the same sweep must say so.
    result = sweep(zygote, variant, tmp_path, stop_at_first_violation=True)
    assert result.violations, f"the {variant} publisher was never caught:\n{result.table()}"
    _, at, seen = result.violations[0]
    assert seen.startswith("error: CorruptFileError") and finding in seen, f"{at}: {seen}"


if __name__ == "__main__":
    _zygote()
