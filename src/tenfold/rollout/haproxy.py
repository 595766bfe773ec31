"""The local :class:`~tenfold.rollout.TrafficRouter`: the canary percentage of the fleet's HAProxy.

HAProxy's frontend sends a user to the canary when the user's bucket (:func:`tenfold.rollout.split.bucket_of`)
is below the percentage held in its split map (see :mod:`tenfold.serving.haproxy`). This router reads
that percentage from HAProxy itself (``get map``) and changes it with ``set map`` through the runtime
API: no reload, no dropped connection, and users stay on their arm while the percentage is unchanged::

    router = HaproxyRouter.from_settings(settings)
    router.set_canary_percent(10)
    assert router.canary_percent() == 10

The map file on disk is rewritten first, so a restarted HAProxy comes back with the same split.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tenfold.config import Settings
from tenfold.rollout import ArmTraffic
from tenfold.rollout.split import ARMS
from tenfold.serving.haproxy import (
    REQUEST_LOG_MARKER,
    SPLIT_KEY,
    HaproxyError,
    HaproxyPaths,
    RuntimeApi,
    write_split_map,
)


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
        # The map file first: HAProxy loads it when it (re)starts, so a split set while it is down (a rollback
        # during its restart) still holds once it is back, even though the runtime API below fails now.
        write_split_map(self.split_map, percent)
        self.api.set_map(self.split_map, SPLIT_KEY, str(percent))
        if (now := self.canary_percent()) != percent:
            raise HaproxyError(f"HAProxy reports a canary percent of {now} after setting {percent}")


class HaproxyObserver:
    """The local :class:`~tenfold.rollout.TrafficObserver`: the fleet's HAProxy request log.

    HAProxy logs every request of the ``fleet`` frontend (:data:`tenfold.serving.haproxy.REQUEST_LOG_MARKER`
    lines: accept time, backend = arm, status, active time) to its log in the fleet's run directory. Both
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
        """The fleet's HAProxy log, counting the predict endpoint only (feedback posts carry no user key,
        so they land on either arm by chance and say nothing about the model)."""
        from tenfold.local import process
        from tenfold.serving.fleet import HAPROXY, run_dir

        return cls(process.log_file(run_dir(settings), HAPROXY), f"{settings.serving.server.api_prefix}/predict")

    def traffic(self, since: dt.datetime, until: dt.datetime) -> dict[str, ArmTraffic]:
        lo, hi = since.timestamp(), until.timestamp()
        seen: dict[str, tuple[list[int], list[float]]] = {arm: ([], []) for arm in ARMS}
        try:
            with open(self.log_path, "rb") as log:
                for line in log:
                    if not line.startswith(_MARKER):
                        continue
                    parts = line.split()
                    if len(parts) not in (6, 7) or parts[-1] != self.path or parts[2].decode() not in seen:
                        continue
                    try:
                        at, status, active_ms = float(parts[1]), int(parts[3]), float(parts[4])
                        # %Tt: from the accept date to the end, idle time on a kept-alive connection included
                        # (%Ta leaves it out); a line of an older format (6 fields) has only %Ta.
                        total_ms = float(parts[5]) if len(parts) == 7 else active_ms
                    except ValueError:
                        continue
                    if lo <= at + max(total_ms, active_ms, 0.0) / 1000 < hi:  # when it ended
                        statuses, latencies = seen[parts[2].decode()]
                        statuses.append(status)
                        latencies.append(max(active_ms, 0.0))
        except FileNotFoundError:
            pass
        return {arm: ArmTraffic(requests=len(st), errors=sum(1 for c in st if c >= 500 or c < 100), latencies_ms=tuple(lat))
                for arm, (st, lat) in seen.items()}


_MARKER = REQUEST_LOG_MARKER.encode() + b" "
