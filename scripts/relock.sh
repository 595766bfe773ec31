#!/usr/bin/env bash
# Re-pin requirements/lock.txt after editing pyproject.toml, and sync .venv to it.
# Serialised with flock so two people (or agents) editing dependencies at once don't clobber the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || { echo "relock: no .venv here: run make setup first" >&2; exit 1; }
exec 9>.venv/.relock.lock
flock 9
# uv from PATH, else the copy `make setup` installed where PATH had none
UV=$(command -v uv || echo .tools/uv/bin/uv)
[ -x "$UV" ] || { echo "relock: uv is not on PATH and not in .tools/uv: run make setup first" >&2; exit 1; }
FIND_LINKS=()
[ -n "${PIP_FIND_LINKS:-}" ] && FIND_LINKS=(--find-links "$PIP_FIND_LINKS")
"$UV" pip compile -q pyproject.toml --all-extras --python-version 3.11 "${FIND_LINKS[@]}" \
  --index-strategy unsafe-best-match --no-header -o requirements/lock.txt
# The CPU build only (its wheel from PIP_FIND_LINKS): resolved without it, torch came from PyPI, a CUDA build.
grep -q '^torch==2.13.0+cpu' requirements/lock.txt || { echo "relock: requirements/lock.txt no longer pins torch==2.13.0+cpu (set PIP_FIND_LINKS to the folder holding its wheel and run it again; git checkout requirements/lock.txt restores the lock)" >&2; exit 1; }
VIRTUAL_ENV=.venv "$UV" pip sync -q "${FIND_LINKS[@]}" --index-strategy unsafe-best-match requirements/lock.txt
VIRTUAL_ENV=.venv "$UV" pip install -q --no-deps -e .
