"""Months as the lake spells them (``year=2013/month=1``), with no heavy imports.

DAG files and cloud adapters import this at parse time, so it must stay free of pyarrow and friends;
:mod:`tenfold.data.lake` re-exports it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Partition:
    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1-12, got {self.month}")

    @property
    def path(self) -> str:
        return f"year={self.year}/month={self.month}"

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @classmethod
    def parse(cls, value: str) -> Partition:
        """``2013-01`` (or ``2013-1``) to a partition; a clear error otherwise."""
        try:
            year, month = value.split("-")
            return cls(int(year), int(month))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a month: use YYYY-MM, e.g. 2013-01") from exc

    @classmethod
    def from_date(cls, day: dt.date) -> Partition:
        return cls(day.year, day.month)

    def previous(self) -> Partition:
        return Partition(self.year - 1, 12) if self.month == 1 else Partition(self.year, self.month - 1)

    def next(self) -> Partition:
        return Partition(self.year + 1, 1) if self.month == 12 else Partition(self.year, self.month + 1)


def month_range(first: str | Partition, last: str | Partition) -> list[Partition]:
    """Every month from ``first`` to ``last`` inclusive."""
    start = first if isinstance(first, Partition) else Partition.parse(first)
    end = last if isinstance(last, Partition) else Partition.parse(last)
    out = []
    while start <= end:
        out.append(start)
        start = start.next()
    return out
