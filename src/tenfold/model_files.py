"""The file names of a model folder (the layout :mod:`tenfold.model.io` writes and the registry stores).

They live here rather than in the ``tenfold.model`` package because importing that package loads torch,
and the registry, the ``tenfold`` CLI and the pipelines only need the names.
"""

from __future__ import annotations

META_FILE = "meta.json"
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
