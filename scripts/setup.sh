#!/usr/bin/env bash
# Idempotent setup: system packages (only those missing), uv, .venv from the lock file, tool venvs.
# Fails early, naming what is missing and how to get it. Run through `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

# One setup at a time in a checkout: `make demo` in one terminal and `make test` in another each ran it, and two syncs
# into one .venv (or one remaking it with --clear while the other installed into it) left it half-installed. The second
# waits for the first, then finds its work done. (Without flock, from util-linux, nothing is serialised.)
mkdir -p .tools
exec 9>.tools/setup.lock
if command -v flock >/dev/null; then
  flock -n 9 || { say "another setup is running in this checkout: waiting for it to finish"; flock 9; }
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || die "Python 3.11 is required ($PY not found). Install python3.11 or set PYTHON=/path/to/python3.11."
is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
# The lock and torch's wheel are for CPython 3.11: another Python got past the checks below and failed in the sync,
# blamed on the package index.
is_311 "$PY" || die "Python 3.11 is required: $PY is $("$PY" --version 2>&1 || echo 'not runnable'). Set PYTHON=/path/to/python3.11."

# --- prerequisites that cannot come from a package registry here ------------------------------
# Checked first: a machine without one is refused at once, not after the system packages below were installed.
if ! command -v gcloud >/dev/null; then
  die "the Google Cloud CLI is required for the Pub/Sub emulator. Install it (https://cloud.google.com/sdk/docs/install), then: gcloud components install pubsub-emulator beta"
fi
# Where the SDK keeps the emulator (as tenfold.local.services.pubsub_prerequisites looks): `gcloud beta emulators pubsub
# env-init --help` answered 0 without it (--help returns before gcloud checks the component), and may prompt to install
# beta with its output thrown away.
gcloud_root=$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")
if [ ! -d "$gcloud_root/platform/pubsub-emulator" ]; then
  die "the Pub/Sub emulator is missing (no $gcloud_root/platform/pubsub-emulator). Install it: gcloud components install pubsub-emulator beta (or apt-get install google-cloud-cli-pubsub-emulator)"
fi
# The emulator runs as `gcloud beta emulators pubsub start`: without the beta component gcloud asks to install it (with
# --quiet it tries, and fails offline), so `tenfold up` failed later with the reason in a service log. The component
# manager records installed components in .install/<id>.manifest; an SDK without that folder is not second-guessed.
if [ -d "$gcloud_root/.install" ] && [ ! -f "$gcloud_root/.install/beta.manifest" ]; then
  die "gcloud's beta commands are missing (no $gcloud_root/.install/beta.manifest): the Pub/Sub emulator runs as \`gcloud beta emulators pubsub start\`. Install them: gcloud components install beta (or apt-get install google-cloud-cli, which includes them)"
fi
# The java Spark runs: $JAVA_HOME/bin/java where JAVA_HOME is set (pyspark's spark-class, tenfold.features.submit), else
# the one on PATH. One named by JAVA_HOME is the user's choice: refused here when too old, never installed over.
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
java_major() { "$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1 || true; }
java_ok() { local v; v=$(java_major); [ -n "$v" ] && [ "$v" -ge 17 ]; }
java_refusal() {
  die "Java 17+ is required by Spark (found: $(java_major | grep . || echo none) at $java_bin${JAVA_HOME:+, from JAVA_HOME}). Install it: apt-get install openjdk-17-jre-headless${JAVA_HOME:+, and point JAVA_HOME at it (or unset it)}; if it is installed, make it the java on PATH (update-alternatives --config java) or set JAVA_HOME to it"
}
[ -n "${JAVA_HOME:-}" ] && ! java_ok && java_refusal
node_ok() { command -v node >/dev/null && [ "$(node --version | sed 's/^v\([0-9]*\).*/\1/')" -ge 18 ] 2>/dev/null; }

# .venv is synced when the lock (or pyproject.toml) changed since: the digest its stamp holds. "bytecode 1" in it: a
# .venv synced before bytecode was compiled is synced (and compiled) once more.
stamp=.venv/.tenfold-lock.sha
lock_digest() { (cat requirements/lock.txt pyproject.toml; echo "bytecode 1") | sha256sum | cut -d' ' -f1; }
# .venv is made afresh (--clear) when its Python no longer runs (the interpreter it was made from removed or upgraded
# away: uv refuses to make a venv over one without --clear), or when the checkout moved: a venv's scripts and its
# editable install name the folder it was made in, so a renamed checkout's `tenfold` failed with "bad interpreter" and a
# copied one's tests ran the old folder's code.
venv_moved() {  # the editable install's path file names the src/ of the checkout the venv was made in
  local made_for; made_for=$(cat .venv/lib/python*/site-packages/__editable__.tenfold-*.pth 2>/dev/null | head -1)
  [ -n "$made_for" ] && [ "$(readlink -f "$made_for" 2>/dev/null)" != "$(readlink -f src)" ]
}
# And when it is not 3.11 (made by an IDE or `python3 -m venv` with another Python): the lock is for 3.11.
# Decided here: a .venv made afresh is synced whatever its stamp said (the torch check below skipped it, and the sync
# failed late, leaving .venv empty).
remake_venv=false
if [ ! -x .venv/bin/python ] || ! is_311 .venv/bin/python || venv_moved; then remake_venv=true; fi
needs_sync() { $remake_venv || [ "$(cat "$stamp" 2>/dev/null)" != "$(lock_digest)" ]; }
# torch==2.13.0+cpu (requirements/lock.txt) is on no package index uv is given: its wheel comes from PIP_FIND_LINKS.
# Checked before anything is installed, where .venv still has to be synced.
if [ -f requirements/lock.txt ] && needs_sync; then
  torch_pin=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements/lock.txt | head -1)
  # For this Python and machine (a wheel of another CPython or CPU got past a looser pattern, and the sync failed).
  torch_wheel="torch-${torch_pin}-cp311-cp311-*_$(uname -m).whl"
  if [ -n "$torch_pin" ] && ! compgen -G "${PIP_FIND_LINKS:-/nonexistent}/$torch_wheel" >/dev/null; then
    die "torch==$torch_pin (the CPU build requirements/lock.txt pins) needs its wheel in a local folder: set PIP_FIND_LINKS to a folder holding $torch_wheel (found none in ${PIP_FIND_LINKS:-PIP_FIND_LINKS, which is unset})"
  fi
fi

# --- system packages: installed with apt only where missing -----------------------------------
# curl: the cloud VMs' startup script, which the tests run. Java (Spark, the Pub/Sub emulator), Node.js and npm (CDK
# Terrain's jsii, the npm tools below) where none is found.
APT_PACKAGES=(haproxy curl)
UV_PIN="uv==0.13.8"
# Without uv, setup makes a venv for it with $PY (below): Debian's and Ubuntu's python3.11 makes one only with
# python3.11-venv (its ensurepip), which was found missing after the system packages were installed.
if ! command -v uv >/dev/null && [ ! -x .tools/uv/bin/uv ] && ! "$PY" -c 'import ensurepip' 2>/dev/null; then
  dpkg-query -W -f='${Status}' python3.11-venv 2>/dev/null | grep -q "install ok installed" \
    && die "cannot create a venv for uv with $PY: it has no ensurepip, though python3.11-venv (for the system's python3.11) is installed. Install $UV_PIN on PATH (pipx install $UV_PIN), or set PYTHON=/usr/bin/python3.11"
  APT_PACKAGES+=(python3.11-venv)
fi
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Chromium: the headless browser the UI tests (tests/ui) drive through Playwright; Playwright's own browser download is
# never used (nothing downloads at test time). Found as tests/ui/conftest.py finds it: TENFOLD_CHROMIUM, else Debian's,
# else `chromium` or `chromium-browser` on PATH (Ubuntu's snap, a wrapper). Ubuntu has no chromium deb ("no installation
# candidate"): asked for there, it failed the one apt-get install of every missing package, naming nothing.
if [ -n "${TENFOLD_CHROMIUM:-}" ]; then chromium_names=("$TENFOLD_CHROMIUM"); else chromium_names=(/usr/lib/chromium/chromium chromium chromium-browser); fi
chromium_found() {
  local name path
  for name in "${chromium_names[@]}"; do
    path=$(command -v "$name" 2>/dev/null) && [ -f "$path" ] && [ -x "$path" ] && return 0
  done
  return 1
}
chromium_candidate() { [ -n "$(LC_ALL=C apt-cache policy chromium 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -vx '(none)' || true)" ]; }
chromium_refusal() {
  if [ -n "${TENFOLD_CHROMIUM:-}" ]; then
    die "Chromium is required by the browser tests (tests/ui): TENFOLD_CHROMIUM=$TENFOLD_CHROMIUM is not an executable file. Point it at one (TENFOLD_CHROMIUM=/path/to/chromium), or unset it"
  fi
  die "Chromium is required by the browser tests (tests/ui): none was found (looked for ${chromium_names[*]}) and apt has no chromium package here (Ubuntu ships it as a snap). Install one (Debian's chromium package: apt-get install chromium; on Ubuntu: snap install chromium), or name it: TENFOLD_CHROMIUM=/path/to/chromium"
}
if ! chromium_found; then
  [ -n "${TENFOLD_CHROMIUM:-}" ] && chromium_refusal
  # apt's package lists never fetched (a fresh container): asked again after `apt-get update` below, before installing.
  if chromium_candidate || ! LC_ALL=C apt-cache policy 2>/dev/null | grep -q ' Packages$'; then
    missing+=(chromium)
  else
    chromium_refusal
  fi
fi
java_ok || missing+=(openjdk-17-jre-headless)
node_ok || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "system packages missing: ${missing[*]}, and apt-get is not available to install them."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "system packages missing: ${missing[*]}. Install them (apt-get install ${missing[*]}) as root."
    # apt-get through sudo without a password (a sudoers rule may allow apt-get alone); at a terminal, sudo may ask
    # for one. Without a terminal (CI), a sudo that asks ended setup with sudo's own error and no word of what for.
    if ! sudo -n apt-get --version >/dev/null 2>&1; then
      [ -t 0 ] || die "system packages missing: ${missing[*]}. Install them as root (apt-get install ${missing[*]}), or run setup at a terminal (sudo asks for a password) or where sudo runs apt-get without one."
      say "sudo asks for your password to install: ${missing[*]}"
      sudo -v || die "sudo refused: install them as root (apt-get install ${missing[*]})"
    fi
    SUDO="sudo"
  fi
  # debconf's questions (tzdata, keyboard-configuration: what chromium and npm recommend) must not wait for an answer:
  # DEBIAN_FRONTEND=noninteractive has to reach apt-get. Set for sudo, sudo's env_reset dropped it, and a question
  # waited on a terminal whose output went to /dev/null. It goes on sudo's command line, which sudo allows where it
  # runs any command; a sudoers rule that allows apt-get alone refuses that, and gets it only where sudoers keeps it.
  APT=(apt-get)
  if [ -n "$SUDO" ]; then
    APT=(sudo apt-get)
    sudo -n DEBIAN_FRONTEND=noninteractive apt-get --version >/dev/null 2>&1 && APT=(sudo DEBIAN_FRONTEND=noninteractive apt-get)
  fi
  say "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null || die "apt-get update failed (are the apt repositories reachable?); install ${missing[*]} by hand"
  [[ " ${missing[*]} " == *" chromium "* ]] && ! chromium_candidate && chromium_refusal
  # apt's output goes to a log, shown when it fails (thrown away, a failure said "see apt's message above" over nothing).
  apt_log=$(mktemp "${TMPDIR:-/tmp}/tenfold-setup-apt.XXXXXX")
  # 9>&-: a service a package's maintainer script starts (where no systemd does) must not inherit setup's lock.
  if DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq "${missing[@]}" </dev/null >"$apt_log" 2>&1 9>&-; then
    rm -f "$apt_log"
  else
    tail -n 30 "$apt_log" >&2
    die "apt-get could not install ${missing[*]} (the end of its output is above, all of it in $apt_log); install them by hand"
  fi
fi
java_ok || java_refusal
node_ok || die "Node.js 18+ is required by CDK Terrain's jsii runtime (found: $(node --version 2>/dev/null || echo none)). Install a newer one (apt-get install nodejs npm, or from nodejs.org)"
# npm installs the CDK CLIs, Node 22 and the Data Docs assets below (Debian's nodejs only suggests npm).
command -v npm >/dev/null || die "npm is required to install the CDK CLIs and the Data Docs assets from the npm registry. Install it: apt-get install npm"

# --- Python environment --------------------------------------------------------------------------
# uv from PATH, else a pinned copy in a venv of its own under .tools/uv: Debian's and Ubuntu's system Python refuses
# `pip install` (externally managed), and a --user install lands where PATH may not look.
if command -v uv >/dev/null; then
  UV=uv
else
  UV=.tools/uv/bin/uv
  if [ ! -x "$UV" ]; then
    say "installing $UV_PIN into .tools/uv"
    rm -rf .tools/uv
    "$PY" -m venv .tools/uv >/dev/null 2>&1 \
      || die "cannot create a venv for uv with $PY: install python3.11-venv (apt-get install python3.11-venv), or install $UV_PIN on PATH (pipx install $UV_PIN)"
    .tools/uv/bin/python -m pip install -q "$UV_PIN" \
      || die "cannot install $UV_PIN into .tools/uv (no package index reachable?): install it on PATH (pipx install $UV_PIN), or set PIP_FIND_LINKS to a folder holding its wheel"
  fi
fi
FIND_LINKS=()
[ -n "${PIP_FIND_LINKS:-}" ] && FIND_LINKS=(--find-links "$PIP_FIND_LINKS")
want=$(lock_digest)
if $remake_venv; then  # (decided above, with the torch check)
  say "creating .venv"
  "$UV" venv -q --clear --python "$PY" .venv
fi
if needs_sync; then
  say "installing pinned dependencies into .venv (requirements/lock.txt)"
  # torch==2.13.0+cpu comes from the local wheel folder (PIP_FIND_LINKS); never a CUDA build.
  # --compile-bytecode: every process (each Airflow task, Spark's Python workers, torchrun's ranks, the replicas)
  # imports from .pyc instead of compiling pandas, Great Expectations, Airflow and torch from source each time,
  # which is what happens where PYTHONDONTWRITEBYTECODE is set or site-packages is read-only (a task's imports
  # 9 -> 3.6 CPU s; see the README, Development).
  VIRTUAL_ENV=.venv "$UV" pip sync -q --compile-bytecode "${FIND_LINKS[@]}" --index-strategy unsafe-best-match requirements/lock.txt \
    || die "could not install the pinned dependencies (is the package index reachable? torch's CPU wheel comes from PIP_FIND_LINKS=${PIP_FIND_LINKS:-})."
  VIRTUAL_ENV=.venv "$UV" pip install -q --no-deps --compile-bytecode -e .
  echo "$want" > "$stamp"
fi
# Tenfold's own modules too (only what changed since the last run is compiled again).
.venv/bin/python -m compileall -q src dags spark_jobs >/dev/null || die "src/, dags/ or spark_jobs/ has a file Python cannot compile (run: .venv/bin/python -m compileall src dags spark_jobs)"
# checkov pins libraries that Airflow 3 cannot share (cachetools<6): it gets its own venv.
# Made afresh, whatever its stamp, when its Python no longer runs or the checkout moved (its scripts' #! names the
# folder it was made in: a renamed checkout's checkov failed with "bad interpreter").
checkov_usable() {
  .tools/checkov/bin/python -c '' 2>/dev/null || return 1
  local first; first=$(head -1 .tools/checkov/bin/checkov 2>/dev/null)
  case "$first" in
    "#!/bin/sh"*) .tools/checkov/bin/checkov --version >/dev/null 2>&1 ;;  # uv's wrapper (a long path, a space in it)
    "#!"*) [ "$(readlink -f "$(dirname "${first#\#!}")")" = "$(readlink -f .tools/checkov/bin)" ] ;;  # a symlinked path too
    *) return 1 ;;
  esac
}
if ! checkov_usable || [ "$(cat .tools/checkov/.stamp 2>/dev/null)" != "$(sha256sum < requirements/checkov.txt)" ]; then
  say "installing checkov into .tools/checkov"
  checkov_usable || { rm -f .tools/checkov/.stamp; "$UV" venv -q --clear --python "$PY" .tools/checkov; }
  VIRTUAL_ENV=.tools/checkov "$UV" pip sync -q requirements/checkov.txt
  sha256sum < requirements/checkov.txt > .tools/checkov/.stamp
fi
# The CDK Terrain / CDKTF CLIs (`cdktn synth`, `cdktf synth` on infra/), pinned by package-lock.json.
# cdktn-cli needs Node >= 22.19: where the system Node is older, a pinned Node 22 from npm serves it.
npm_tool() {  # npm_tool NAME [INCOMPLETE]: install requirements/npm/NAME into .tools/NAME when its lock (or .npmrc)
  # changed, or when the command INCOMPLETE, given .tools/NAME/node_modules, says something in it is missing
  local src=requirements/npm/$1 dst=.tools/$1 incomplete=${2:-false}
  local files=("$src/package.json" "$src/package-lock.json")
  [ -f "$src/.npmrc" ] && files+=("$src/.npmrc")
  local want; want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
  # The stamp is trusted only beside the packages it stamps: a node_modules deleted (or never finished) under a stamp
  # kept every later setup a no-op, while the Data Docs said "run make setup" for their missing assets.
  [ "$(cat "$dst/.stamp" 2>/dev/null)" = "$want" ] && [ -d "$dst/node_modules" ] && ! "$incomplete" "$dst/node_modules" \
    && return 0
  say "installing $1 (npm) into $dst"
  # The stamp goes first: an install cut short (killed, a full disk) must not be trusted beside its old stamp.
  rm -f "$dst/.stamp"
  mkdir -p "$dst" && cp "${files[@]}" "$dst/"
  npm ci --prefix "$dst" --no-audit --no-fund --loglevel=error >/dev/null \
    || die "npm could not install $src (is the npm registry reachable?)"
  echo "$want" > "$dst/.stamp"
}
npm_tool cdk
# cdktn-cli declares node >= 22.19.0: a system Node 22 older than that gets the pinned Node 22 too.
node_version=$(node --version | sed 's/^v//')
[ "$(printf '22.19.0\n%s\n' "$node_version" | sort -V | head -1)" = "22.19.0" ] || npm_tool node22
# Data Docs offline: the bootstrap, jQuery, bootstrap-table, font-awesome and vega files GX's pages load from
# CDNs, at the versions its templates name; tenfold.quality.datadocs copies them into every Data Docs site.
# A package deleted from node_modules under a current stamp is installed again: the Data Docs warned "jquery@3.7.1 (not
# installed) ... run make setup", and setup trusted the stamp. What is missing is asked of the Data Docs' own check
# (exit 3), loaded by its path: importing tenfold.quality would load Great Expectations (seconds) on every setup. A
# check that cannot run leaves the stamp trusted, as before.
datadocs_assets_missing() {
  local rc=0
  .venv/bin/python -c 'import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("datadocs_assets", "src/tenfold/quality/datadocs_assets.py")
assets = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assets)
sys.exit(3 if assets.missing_assets(Path(sys.argv[1])) else 0)' "$1" 2>/dev/null || rc=$?
  [ "$rc" = 3 ]
}
npm_tool datadocs-assets datadocs_assets_missing
say "ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
