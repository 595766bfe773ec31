"""``python -m tenfold.serving``: one model-server replica (see :mod:`tenfold.serving.replica`)."""

from __future__ import annotations

from tenfold.serving.replica import main

raise SystemExit(main())
