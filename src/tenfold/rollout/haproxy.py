"""The local :class:`~tenfold.rollout.TrafficRouter`: the canary percentage of the fleet's HAProxy.

HAProxy's frontend sends a user to the canary when the user's bucket (:func:`tenfold.rollout.split.bucket_of`)
is below the percentage held in its split map (see :mod:`tenfold.serving.haproxy`). This router reads
that percentage from HAProxy itself (``get map``) and changes it with ``set map`` through the runtime
API: no reload, no dropped connection, and users stay on their arm while the percentage is unchanged::

    router = HaproxyRouter.from_settings(settings)
    router.set_canary_percent(10)
    assert router.canary_percent() == 10

The map file on disk is rewritten first, so a restarted HAProxy comes back with the same split (a lower share set
while HAProxy is down holds once it is back; a higher one HAProxy did not take is set back in the file). When it
cannot be written (a full disk), a lower share is still set in HAProxy and the call raises :class:`SplitNotSaved`,
saying so; a higher one is refused with nothing changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path
from typing import BinaryIO

from tenfold.config import Settings
from tenfold.fsio import atomic_write
from tenfold.rollout import ArmTraffic
from tenfold.rollout.split import ARMS
from tenfold.serving.haproxy import (
    SPLIT_KEY,
    HaproxyError,
    HaproxyFault,
    HaproxyPaths,
    RequestLine,
    RuntimeApi,
    parse_request_line,
    read_split_map,
    write_split_map,
)
from tenfold.serving.requestlog import rotated


def check_percent(percent: object) -> int:
    """``percent`` as a whole number 0..100, or a :class:`ValueError` saying what is allowed."""
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise ValueError(f"the canary percent must be a whole number from 0 to 100, got {percent!r}")
    if not 0 <= percent <= 100:
        raise ValueError(f"the canary percent must be from 0 to 100, got {percent}")
    return percent


class HaproxyRouter:
    """Reads and sets the canary percentage of the local fleet's HAProxy through its runtime API."""

    def __init__(self, socket_path: Path, split_map: Path) -> None:
        self.api = RuntimeApi(socket_path)
        self.split_map = Path(split_map)

    @classmethod
    def from_settings(cls, settings: Settings) -> HaproxyRouter:
        paths = HaproxyPaths.of(settings)
        return cls(paths.socket, paths.split_map)

    def canary_percent(self) -> int:
        """The percentage HAProxy applies now (read from HAProxy, not from a file or a variable here)."""
        value = self.api.get_map(self.split_map, SPLIT_KEY)
        if value is None:
            raise HaproxyError(f"HAProxy's split map {self.split_map} has no {SPLIT_KEY} entry: restart the fleet (`tenfold serve up`)")
        try:
            return check_percent(int(value))
        except ValueError as exc:
            raise HaproxyError(f"HAProxy's split map holds {value!r}, not a percentage: set one with `tenfold serve split`") from exc

    def set_canary_percent(self, percent: int) -> None:
        """Send ``percent`` of the buckets (and of keyless requests) to the canary pool, at once."""
        percent = check_percent(percent)
        if not self.split_map.parent.is_dir():  # no fleet ever ran here: nothing to set, no folder to write into
            raise HaproxyError(f"no serving fleet has run under {self.split_map.parent}: is the fleet up? "
                               "(`tenfold serve up`)")
        from tenfold.fsio import file_lock

        # One setter at a time (`tenfold serve split` beside a rollout's step): interleaved, the file and HAProxy
        # could be left at different splits, both calls succeeding, and HAProxy's next restart brought the file's back.
        with file_lock(self.split_map.with_name(".split.lock")):
            # The map file first: HAProxy loads it when it (re)starts, so a split set while it is down (a rollback
            # during its restart) still holds once it is back, even though the runtime API below fails now.
            unreadable = False
            try:
                before = read_split_map(self.split_map)  # None: no share in the file (HAProxy then starts at 0)
                existed = self.split_map.exists()
            except OSError:  # unreadable: the write below meets the same file, and says so
                before, unreadable, existed = None, True, True
            try:
                write_split_map(self.split_map, percent)
            except OSError as exc:
                self._set_without_the_file(percent, exc)
                return
            try:
                self._apply(percent)
            except BaseException as exc:
                # A higher share HAProxy did not take goes out of the file again: left there, the next restart of
                # HAProxy sent it to the canary unannounced, after the command had failed (a lower one stays, above).
                # A lower share (a rollback to 0 included) stays, as above; and a share over a file that could not be
                # read is not put back as "none" (removed, a restart would take the fleet's default for it).
                if percent > (before or 0) and not unreadable:
                    self._put_back(before, percent, exc, existed=existed)
                raise

    def _put_back(self, before: int | None, percent: int, cause: BaseException, *, existed: bool) -> None:
        """Return the map file to ``before`` (None: it had no share), after setting ``percent`` failed. A file that
        held no share (empty, or no valid entry) is left an empty map, not removed: HAProxy refuses to start without
        the map file its configuration names, and the fleet's supervisor restarts it on the configuration as it is.
        Only a file that was not there goes again."""
        try:
            if before is None and not existed:
                self.split_map.unlink(missing_ok=True)
            elif before is None:  # no entry: HAProxy's default for the split, 0 %, as before the call
                atomic_write(self.split_map, b"", durable=False)
            else:
                write_split_map(self.split_map, before)
        except OSError as exc:
            back = f"{before} %" if before is not None else "no share"
            raise HaproxyError(f"{cause}; and the split map {self.split_map} could not be set back to {back} "
                               f"({exc.strerror or exc}): a restart of HAProxy would send {percent} % to the canary; "
                               "set the split again once the fleet is up (`tenfold serve split`)") from cause

    def _apply(self, percent: int, cause: BaseException | None = None) -> None:
        """Set ``percent`` through HAProxy's runtime API and read it back."""
        self.api.set_map(self.split_map, SPLIT_KEY, str(percent))
        if (now := self.canary_percent()) != percent:
            raise HaproxyFault(f"HAProxy reports a canary percent of {now} after setting {percent}") from cause

    def _set_without_the_file(self, percent: int, exc: OSError) -> None:
        """The map file could not be written (a full disk). A lower share is still set in HAProxy, then refused with
        what a restart would bring back: the rollback of a failing canary (weight 0: a step's, conclude's, `tenfold
        rollout abort`'s) failed here before HAProxy was told, and the canary kept its share of users while the disk
        was full. A higher share is refused with nothing changed: a restart would take it back unannounced."""
        why = f"HAProxy's split map {self.split_map} could not be written ({exc.strerror or exc})"
        todo = f"free disk space under {self.split_map.parent} and set the split again"
        try:
            now = self.canary_percent()
        except HaproxyError as down:
            raise SplitNotSaved(f"{why}, and HAProxy did not answer either ({down}): the canary percent was not "
                                f"changed; {todo}") from exc
        if percent > now:
            raise SplitNotSaved(f"{why}: the canary percent stays {now} (not raised to {percent}); {todo}") from exc
        self._apply(percent, exc)
        on_disk = read_split_map(self.split_map)
        if on_disk == percent:  # the file holds it already (a retry): HAProxy and a restarted HAProxy agree
            return
        raise SplitNotSaved(f"{why}: the canary percent is {percent} in HAProxy now, but a restart of HAProxy would "
                            f"bring back the {on_disk if on_disk is not None else 'unreadable'} % of the file; {todo} "
                            f"(`tenfold serve split {percent}`)", applied=percent) from exc


class SplitNotSaved(HaproxyError):
    """The split map file could not be written. ``applied``: the percentage HAProxy applies now all the same (a lower
    share is set in HAProxy regardless), or None when nothing changed."""

    def __init__(self, message: str, *, applied: int | None = None) -> None:
        super().__init__(message)
        self.applied = applied


class HaproxyObserver:
    """The local :class:`~tenfold.rollout.TrafficObserver`: the fleet's HAProxy request log.

    HAProxy logs every request of the ``fleet`` frontend (:data:`tenfold.serving.haproxy.REQUEST_LOG_MARKER`
    lines: accept time, backend = arm, status, active time) into a ring that the supervisor streams to the request
    log in the fleet's run directory (:mod:`tenfold.serving.requestlog`). Both
    arms are measured at the same place the same way, and a request that no replica answered (HAProxy's
    own 503) counts as the arm's error too, as the cloud load balancer's logs would show it.

    A request counts in the window in which it ended (accept date plus total time): HAProxy logs it only
    then, so one still running when a window is read (a slow answer, a timeout's 504) counts in the next
    window instead of in none.
    """

    def __init__(self, log_path: Path, path: str = "/v1/predict") -> None:
        self.log_path, self.path = Path(log_path), path.encode()

    @classmethod
    def from_settings(cls, settings: Settings) -> HaproxyObserver:
        """The fleet's request log, counting the predict endpoint only (feedback posts carry no user key,
        so they land on either arm by chance and say nothing about the model)."""
        return cls(HaproxyPaths.of(settings).request_log, f"{settings.serving.server.api_prefix}/predict")

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        lo, hi = since.timestamp(), until.timestamp()
        seen: dict[str, tuple[list[int], list[float]]] = {arm: ([], []) for arm in ARMS}
        with contextlib.ExitStack() as files:
            for log in _both(self.log_path, files):  # the older file first
                # A log holds hours of requests: start near the window, not at the top.
                log.seek(_offset_before(log, lo - _DISORDER_S))
                for line in log:
                    entry = _entry(line)
                    if entry is None:
                        continue
                    ended = entry.ended
                    if ended >= hi + _DISORDER_S:
                        break  # lines are written as requests end: nothing further ends in the window
                    if entry.path == self.path and entry.arm in seen and lo <= ended < hi:
                        statuses, latencies = seen[entry.arm]
                        statuses.append(entry.status)
                        latencies.append(max(entry.active_ms, 0.0))
        return {arm: ArmTraffic(requests=len(st), errors=sum(1 for c in st if c >= 500 or c < 100), latencies_ms=tuple(lat))
                for arm, (st, lat) in seen.items()}


def _both(log_path: Path, files: contextlib.ExitStack) -> list[BinaryIO]:
    """The request log's older file and the log, both opened before either is read: the log starts a new file past
    serving.fleet.request_log_max_kb (tenfold.serving.requestlog), and lines that moved to the older file between
    two reads would be in neither. The log is opened first; found as the older file next (it rotated in between),
    it is read once, as the older file, and the new log after it."""

    def opened(path: Path) -> BinaryIO | None:
        try:
            return files.enter_context(open(path, "rb"))
        except FileNotFoundError:
            return None

    current = opened(log_path)
    older = opened(rotated(log_path))
    if current is not None and older is not None and os.fstat(current.fileno()).st_ino == os.fstat(older.fileno()).st_ino:
        current = opened(log_path)
    return [f for f in (older, current) if f is not None]


# HAProxy writes a request's line when the request ends, so the log is in order of end time up to the threads'
# interleaving: a line may follow one that ended up to this much later (generous: it only costs lines read).
_DISORDER_S = 60.0
_SCAN_BYTES = 64 * 1024  # below this the search reads on line by line


def _entry(line: bytes) -> RequestLine | None:
    """A request line of the log (the one parser of its format, beside the format in tenfold.serving.haproxy)."""
    return parse_request_line(line)


def _first_end_from(log: BinaryIO, offset: int) -> float | None:
    """When the first request line that starts at or after ``offset`` ended (None: none does)."""
    log.seek(offset)
    if offset:
        log.readline()  # the rest of the line ``offset`` falls in
    for line in log:
        entry = _entry(line)
        if entry is not None:
            return entry.ended
    return None


def _offset_before(log: BinaryIO, t: float) -> int:
    """An offset at a line's start before every request line that ended at ``t`` or later (bisection: the lines
    are in order of end time), so a reader starting there misses none of them."""
    lo, hi = 0, log.seek(0, 2)
    while hi - lo > _SCAN_BYTES:  # invariant: the first request line after lo ended before t (or lo is 0)
        mid = (lo + hi) // 2
        ended = _first_end_from(log, mid)
        if ended is None or ended >= t:
            hi = mid
        else:
            lo = mid
    log.seek(lo)
    if lo:
        log.readline()
    return log.tell()


