"""Tenfold: an ML platform for Google Cloud that starts on one machine and grows without a rewrite."""

from __future__ import annotations

__version__ = "0.1.0"
