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
