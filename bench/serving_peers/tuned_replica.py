"""Tenfold's replica with two one-line changes applied at run time: what the benchmark measures as "tuned".

Run by ``bench/serving.py`` (in .venv, with the bench's TENFOLD_* environment)::

    .venv/bin/python bench/serving_peers/tuned_replica.py --host 127.0.0.1 --port 8105 --model <version>

(the arguments are ``python -m tenfold.serving``'s). Not the product: an experiment showing what the
changes the benchmark recommends would give, measured in the same run as the real replica.

1. ``gc.collect(); gc.freeze()`` once the model and the lookups are loaded. The lookups' indexes are
   hundreds of thousands of long-lived objects; every full (generation 2) collection walks them all,
   about 0.2 s on this machine, and that stop-the-world pause lands in the tail latency. Frozen objects
   are never walked again. (In the product: in ``tenfold.serving.app``'s ``load()``, after the load.)
2. ``Preprocessor._require`` checks each of the ~28 feature columns against ``table.column_names``, a
   property that builds a fresh list of every column name on each access: about 1.2 ms of the ~1.7 ms
   that preprocessing costs per model call, whatever the batch size. The set is built once here.
   (In the product: ``tenfold.model.preprocessing.Preprocessor._require``.)
"""

from __future__ import annotations

import gc
import sys
from typing import Any


def apply() -> None:
    from tenfold.model import preprocessing
    from tenfold.serving import app as app_module
    from tenfold.serving import loading

    original_require = preprocessing.Preprocessor._require

    def require(self: Any, table: Any) -> None:
        names = set(table.column_names)
        if any(c not in names for c in (*self.categorical_columns, *self.numeric_columns)):
            original_require(self, table)  # raises with the product's own message

    preprocessing.Preprocessor._require = require  # type: ignore[method-assign]

    def load_and_freeze(settings: Any, ref: str) -> Any:
        served = loading.load_served_model(settings, ref)
        gc.collect()
        gc.freeze()
        return served

    create_app = app_module.create_app

    def create(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("loader", load_and_freeze)
        return create_app(*args, **kwargs)

    # replica.serve() imports create_app from the module when it runs: it gets this one.
    app_module.create_app = create  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    from tenfold.serving import replica

    apply()
    return replica.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
