"""Keys derived from a run key: readable, valid as a folder and a cloud run id, and never shared."""

from __future__ import annotations

import re

from tenfold.config.names import scoped_key


def test_a_scoped_key_is_a_valid_run_id_that_two_long_run_keys_never_share() -> None:
    # Two run keys that differ only past the readable prefix (the suffix that made them unique).
    a, b = "scheduled__2013-06-01t00-00-00-00-00-" + "x" * 13 + "-0a1b2c3d", "scheduled__2013-06-01t00-00-00-00-00-" + "x" * 13 + "-9f8e7d6c"
    assert len(a) == len(b) == 59 and a[:46] == b[:46]
    assert scoped_key(a, "v3") != scoped_key(b, "v3")
    assert scoped_key(a, "v3") != scoped_key(a, "v4") != scoped_key(a, "v3", "other-data")
    assert scoped_key(a, "v3") == scoped_key(a, "v3")  # a retried task finds its own folder again
    # The parts are not run together: ("ab", "c") and ("a", "bc") name different work.
    assert scoped_key(a, "ab", "c") != scoped_key(a, "a", "bc")
    for key in (scoped_key(a, "v3"), scoped_key("short", "v3")):
        assert len(key) <= 59 and re.fullmatch(r"[a-z0-9_.-]+", key), key
    assert scoped_key("short", "v3").startswith("short-")
