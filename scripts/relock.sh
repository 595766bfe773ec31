#!/usr/bin/env bash
# Re-pin requirements/lock.txt after editing pyproject.toml, and sync .venv to it.
# Serialised with flock so two people (or agents) editing dependencies at once don't clobber the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>.venv/.relock.lock
flock 9
# uv from PATH, else the copy `make setup` installed where PATH had none
UV=$(command -v uv || echo .tools/uv/bin/uv)
[ -x "$UV" ] || { echo "relock: uv is not on PATH and not in .tools/uv: run make setup first" >&2; exit 1; }
FIND_LINKS=()
[ -n "${PIP_FIND_LINKS:-}" ] && FIND_LINKS=(--find-links "$PIP_FIND_LINKS")
"$UV" pip compile -q pyproject.toml --all-extras --python-version 3.11 "${FIND_LINKS[@]}" \
  --index-strategy unsafe-best-match --no-header -o requirements/lock.txt
VIRTUAL_ENV=.venv "$UV" pip sync -q "${FIND_LINKS[@]}" --index-strategy unsafe-best-match requirements/lock.txt
VIRTUAL_ENV=.venv "$UV" pip install -q --no-deps -e .
