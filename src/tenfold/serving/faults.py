"""Fault injection for game days and the rollout tests: a replica that answers slowly or fails on purpose.

Like Envoy's and Istio's fault filters, but in the replica itself, so a canary pool can be made worse for
real (its answers really are late, its 500s really cross HAProxy) and the canary analysis has to catch
it. Off unless asked for: ``tenfold serve fault --pool canary --delay-ms 200`` (or ``--error-rate 0.05``)
restarts that pool's replicas with ``python -m tenfold.serving ... --fault delay_ms=200``; ``--clear``
takes it away. Never set in a shipped environment.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """Each prediction request waits ``delay_ms`` more; a share ``error_rate`` of them then fails with 500."""

    delay_ms: float = 0.0
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= 60_000:
            raise ValueError(f"fault delay_ms must be from 0 to 60000, got {self.delay_ms}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"fault error_rate must be from 0 to 1, got {self.error_rate}")

    @property
    def active(self) -> bool:
        return self.delay_ms > 0 or self.error_rate > 0

    def __str__(self) -> str:
        """The canonical text (``""`` for none): what the spec stores and ``--fault`` takes."""
        parts = [f"delay_ms={self.delay_ms:g}"] if self.delay_ms else []
        parts += [f"error_rate={self.error_rate:g}"] if self.error_rate else []
        return ",".join(parts)

    @classmethod
    def parse(cls, text: str | None) -> Fault:
        """``"delay_ms=200,error_rate=0.05"`` (either part optional; empty: no fault); a clear ValueError otherwise."""
        values: dict[str, float] = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("delay_ms", "error_rate"):
                raise ValueError(f"fault {text!r}: write delay_ms=<ms> and/or error_rate=<0..1>, comma-separated")
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"fault {text!r}: {key} must be a number, got {value!r}") from None
        return cls(**values)

    async def strikes(self) -> bool:
        """Wait the delay; True when this request is one of those to fail."""
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000.0)
        return self.error_rate > 0 and random.random() < self.error_rate
