"""How many replicas a pool of the local fleet needs: the cloud autoscaler's rule, applied locally.

The signal is load-balancer utilisation per replica, as in the cloud (a managed instance group's
``loadBalancingUtilization`` on the backend service): the requests HAProxy holds for the pool (in
flight on its replicas plus queued), per ready replica, over the requests one replica is sized for
(``settings.serving.fleet.replica_capacity``). The target is ``settings.serving.target_utilization``,
the same number the cloud autoscaler is given. The recommendation is the replica count that brings
utilisation to the target, ``ceil(in_flight / (capacity * target))``, within the pool's bounds.

Scaling out happens at once. Scaling in follows the stabilisation window: the pool keeps the highest
recommendation of the last ``stabilization_s`` seconds (``settings.serving.fleet.stabilization_s``,
30 s by default), so it shrinks only after the load stayed low for that long. Kubernetes' HPA and
Compute Engine's autoscaler follow the same rule, but their windows are their own: Compute Engine's
scale-in stabilization period is fixed at 10 minutes, so a cloud pool keeps its replicas far longer
after a peak than the local fleet does.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


def recommend(in_flight: float, *, capacity: int, target: float, low: int, high: int) -> int:
    """Replicas that hold ``in_flight`` requests at ``target`` utilisation, within ``low..high``."""
    if capacity <= 0 or not 0 < target <= 1:
        raise ValueError(f"capacity must be positive and target within (0, 1], got {capacity} and {target}")
    # A hair below a whole replica's worth does not round up to one more replica.
    needed = math.ceil(max(in_flight, 0.0) / (capacity * target) - 1e-9)
    return max(low, min(high, needed))


def utilization(in_flight: float, ready: int, capacity: int) -> float:
    """In-flight requests per ready replica over one replica's capacity (inf with none ready but load)."""
    if ready <= 0:
        return math.inf if in_flight > 0 else 0.0
    return in_flight / (ready * capacity)


@dataclass
class Autoscaler:
    """The replica count of one pool over time: ``decide(now, in_flight)`` once per scaling interval."""

    low: int
    high: int
    capacity: int
    target: float
    stabilization_s: float
    _history: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def set_bounds(self, low: int, high: int) -> None:
        if high < low:
            raise ValueError(f"a pool's max replicas ({high}) must be at least its min ({low})")
        self.low, self.high = low, high

    def restart(self) -> None:
        """Start the window again from the pool's size at the next :meth:`decide`: after a time nothing was observed
        (HAProxy silent, then restarted), the first sample after it, 0 in flight while every replica re-entered, was
        the whole window, and a pool of warm replicas was cut to its minimum at once as the clients came back."""
        self._history.clear()

    def decide(self, now: float, in_flight: float, current: int) -> int:
        """The count the pool should have now, given its mean in-flight requests since the last call.

        ``current`` is the count the pool is sized at (its running, non-draining replicas); it enters
        the window as well, so a pool never shrinks sooner than ``stabilization_s`` after it grew.
        """
        raw = recommend(in_flight, capacity=self.capacity, target=self.target, low=self.low, high=self.high)
        if not self._history:  # a first call, or the first since restart(): the window starts from the pool's size
            self._history.append((now, current))
        self._history.append((now, raw))
        while self._history[0][0] < now - self.stabilization_s:
            self._history.popleft()
        if raw >= current:
            return raw  # out (or steady) at once
        # In only to the peak of the window: the load must have stayed low for all of it. Never above ``current``:
        # a peak from before a lowered max would otherwise grow an idle pool once the max is raised again.
        return max(self.low, min(self.high, current, max(n for _, n in self._history)))
