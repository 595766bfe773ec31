"""Adapters the DAGs use in ``dev`` and ``prod`` to drive Google Cloud (Dataproc, Compute Engine, URL maps).

Each module builds request bodies from :class:`~tenfold.config.Settings` (pure, unit-tested against the
synthesized infrastructure in ``tests/unit/cloud``) and, where a call has to be made, takes the Google
client as an argument so tests fake it at the client boundary. Nothing here imports a Google client at
module top: DAG files import these modules while being parsed.
"""

from __future__ import annotations
