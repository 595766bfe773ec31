"""The file names of a model folder (the layout :mod:`tenfold.model.io` writes and the registry stores).

They live here rather than in the ``tenfold.model`` package because importing that package loads torch,
and the registry, the ``tenfold`` CLI and the pipelines only need the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

META_FILE = "meta.json"
# The format of meta.json (its "version" field) that tenfold.model.io writes and reads. Here, so that the checks made
# before a model loads (tenfold.workloads.meta_problem) refuse a newer one without importing torch.
META_VERSION = 1
WEIGHTS_FILE = "weights.pt"
PREPROCESSING_FILE = "preprocessing.json"
# meta.json is written last and is the folder's commit marker: copy it last, and trust a folder only with it.
WRITE_ORDER = (WEIGHTS_FILE, PREPROCESSING_FILE, META_FILE)
# The drift monitor's reference profile of the training window (tenfold.monitoring.profile): not read to
# load a model, but one of the version's hash-verified files so monitoring never rereads training data.
REFERENCE_PROFILE_FILE = "reference_profile.json"


def unsafe_relative_path(path: str) -> str | None:
    """Why ``path`` (a file's path inside a model folder, POSIX separators, as a store records it) could name a file
    outside the folder it is copied into, or None when it is a plain relative path."""
    if not path:
        return "it is empty"
    if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
        return "it is absolute or uses a backslash"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "it has an empty, '.' or '..' part"
    return None


def newer_meta_format(meta: Mapping[str, Any]) -> str | None:
    """Why a model whose ``meta.json`` is ``meta`` needs a newer Tenfold than this one (None when it does not): a newer
    Tenfold saved it in a format this one cannot read. Not damage, so not "re-save it": upgrading is what to do."""
    found = meta.get("version")
    if type(found) is int and found > META_VERSION:
        return (f"its meta.json is format {found}; this Tenfold reads format {META_VERSION}: upgrade tenfold where it "
                "is served")
    return None


def meta_format_problem(meta: Mapping[str, Any]) -> str | None:
    """Why ``meta``'s format ("version") is not one this Tenfold reads (None when it is): a newer one
    (:func:`newer_meta_format`), or any other value that ``tenfold.model.io.read_meta`` refuses as an "unsupported meta
    version" (a string, 2.0, 0, none at all), in its words, so the checks made before a model loads refuse what it
    would. The same comparison as read_meta's, not a stricter one: a check that refused more than load_model would
    keep a model it serves from being promoted."""
    if newer := newer_meta_format(meta):
        return newer
    found = meta.get("version")
    if found != META_VERSION:
        return f"its meta.json has an unsupported meta version ({found!r}; this Tenfold reads format {META_VERSION})"
    return None
