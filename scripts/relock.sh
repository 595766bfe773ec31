#!/usr/bin/env bash
# Re-pin requirements/lock.txt after editing pyproject.toml, and sync .venv to it.
# Serialised with flock so two people (or agents) editing dependencies at once don't clobber the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>.venv/.relock.lock
flock 9
FIND_LINKS=()
[ -n "${PIP_FIND_LINKS:-}" ] && FIND_LINKS=(--find-links "$PIP_FIND_LINKS")
uv pip compile -q pyproject.toml --all-extras --python-version 3.11 "${FIND_LINKS[@]}" \
  --index-strategy unsafe-best-match --no-header -o requirements/lock.txt
VIRTUAL_ENV=.venv uv pip sync -q "${FIND_LINKS[@]}" --index-strategy unsafe-best-match requirements/lock.txt
VIRTUAL_ENV=.venv uv pip install -q --no-deps -e .
