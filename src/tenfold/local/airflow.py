"""The environment Airflow runs in locally: the platform's components and ``airflow dags test`` alike.

``airflow_env(settings)`` is the one definition of that environment. ``tenfold up`` starts Airflow's
components with it (see :mod:`tenfold.local.services`), and integration tests run ``airflow dags test
<dag_id> <date>`` with it::

    env = airflow_env(settings)
    ensure_airflow_db(env)
    subprocess.run(["airflow", "dags", "test", "build_features", "2013-02-01"], env=env, check=True)

Code inside DAG tasks then resolves the same :class:`Settings` through ``get_settings()`` because
the ``TENFOLD_*`` variables (home, ports, project) travel with the environment.

Before the components start, :func:`ensure_airflow_config` writes ``airflow.cfg`` with the secrets they
must share, or adds those an existing one lacks (the components start at once, and each would otherwise generate
its own), and :func:`ensure_admin_password` generates the admin's password: both files mode 0600. ``tenfold status``
prints the login.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import json
import os
import secrets
import shlex
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from tenfold.config import Settings, project_root
from tenfold.local import loopback
from tenfold.local.env import settings_env
from tenfold.local.process import LocalPlatformError, run_bounded

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
CONFIG_FILE = "airflow.cfg"


def venv_bin() -> Path:
    """The ``bin`` folder of the running interpreter's environment (where ``airflow`` lives)."""
    # sys.prefix, not sys.executable's resolved path: a venv's python is a symlink to the base one.
    return Path(sys.prefix) / "bin"


def airflow_home(settings: Settings) -> Path:
    return settings.local.home / "airflow"


def airflow_url(settings: Settings) -> str:
    return f"http://{settings.local.bind_host}:{settings.local.airflow_port}"


def airflow_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every variable an Airflow process needs to run Tenfold's DAGs against the local services.

    ``base`` (default ``os.environ``) supplies the rest of the environment. Its ``AIRFLOW_*`` variables
    (``AIRFLOW__*`` options, ``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``, ``AIRFLOW_HOME``, ``AIRFLOW_CONFIG``) are
    dropped and every variable that places the settings (home, project, all local ports) is set from
    ``settings``, so an outer configuration (a running ``make up``, another test session, another
    project's ``airflow.cfg``) never leaks in; other ``TENFOLD_*`` variables pass through.
    """
    base = os.environ if base is None else base
    # AIRFLOW_CONFIG above all: Airflow would read (or write, with fresh keys) that file instead of the home's.
    env = {k: v for k, v in base.items() if not k.startswith("AIRFLOW_")}
    home = airflow_home(settings)
    url = airflow_url(settings)
    conn = {
        "conn_type": "google_cloud_platform",
        # The emulators accept anything; anonymous keeps the google provider from looking for ADC.
        "extra": {"is_anonymous": True, "project": settings.project_id},
    }
    env.update(settings_env(settings))
    # Airflow's components and tasks reach the API, the log servers and the emulators directly, on whichever loopback
    # address the settings bind.
    env.update(loopback.not_proxied(env, (settings.local.bind_host,)))
    env.update(
        {
            "PATH": os.pathsep.join([str(venv_bin()), env.get("PATH", os.defpath)]),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / CONFIG_FILE),  # the one ensure_airflow_config writes the shared keys to
            "AIRFLOW__CORE__DAGS_FOLDER": str(project_root() / "dags"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "2",  # 2 cores: more concurrent tasks only thrash (and cost memory)
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            # "<user>:admin" is the role; the password is generated into AIRFLOW_HOME (see admin_password).
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow.admin_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORDS_FILE),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            # SQLite lets one writer in at a time; its default 5 s wait for the lock failed writes under load (the UI's
            # "unpause on trigger" answered 500 while the scheduler wrote, and the run it triggered stayed queued).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.SQLITE_CONNECT_ARGS_ASYNC",
            "AIRFLOW__API__HOST": settings.local.bind_host,
            "AIRFLOW__API__PORT": str(settings.local.airflow_port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            # Task logs are served by tenfold.local.airflow_logs on loopback (Airflow's own log servers
            # listen on all interfaces); the UI fetches a running task's log from <hostname>:<port>, so
            # the hostname Airflow records for a task is the loopback address the log server is on.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.local.airflow_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.local.airflow_trigger_log_port),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tenfold.local.airflow.loopback_hostname",
            # Off by default; pinned to loopback should anyone turn it on.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": settings.local.bind_host,
            # New DAG files show up within half a minute instead of five.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            f"AIRFLOW_CONN_{settings.airflow.gcp_conn_id.upper()}": json.dumps(conn),
        }
    )
    return env


def loopback_hostname() -> str:
    """The host name Airflow records for local task instances (``[core] hostname_callable``): the address
    the log server listens on, so the UI can fetch a running task's log (a host name may resolve elsewhere)."""
    from tenfold.config import get_settings

    return get_settings().local.bind_host


def admin_password(settings: Settings) -> str | None:
    """The admin user's password, once :func:`ensure_admin_password` (``tenfold up``) has generated it."""
    path = airflow_home(settings) / PASSWORDS_FILE
    try:
        passwords = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    value = passwords.get(settings.airflow.admin_user) if isinstance(passwords, dict) else None
    return str(value) if value is not None else None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by this user only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_admin_password(settings: Settings) -> str:
    """The admin user's password: generated (``secrets``) into Airflow's passwords file on first use.

    The simple auth manager reads users' passwords from that file; one it finds there it neither
    regenerates nor prints (into the API server's log). The file is mode 0600, and so is made one
    written by an earlier Airflow (``standalone`` wrote it world-readable).
    """
    path = airflow_home(settings) / PASSWORDS_FILE
    user = settings.airflow.admin_user
    try:
        passwords = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        passwords = {}
    except ValueError as exc:
        raise RuntimeError(f"{path} is not JSON ({exc}): delete it and run `tenfold up` to generate a new password") from exc
    if not isinstance(passwords, dict):
        raise RuntimeError(f"{path} does not hold a user -> password object: delete it and run `tenfold up`")
    if user not in passwords:
        passwords[user] = secrets.token_urlsafe(18)
        _write_private(path, json.dumps(passwords) + "\n")
    else:
        path.chmod(0o600)
    return str(passwords[user])


# The secrets Airflow's components must share, and how many random bytes each is made of: the Fernet key that encrypts
# connections and variables, the API server's session secret, and the key that signs the task tokens.
SHARED_KEYS = (("core", "fernet_key", 32), ("api", "secret_key", 64), ("api_auth", "jwt_secret", 64))


def ensure_airflow_config(settings: Settings) -> Path:
    """Write ``airflow.cfg`` with the secrets every component must share, or add those an existing one lacks.

    Started one by one (not under ``standalone``, whose parent wrote the file before forking), each
    component that finds no ``airflow.cfg``, or one without a key (an Airflow 2 home's, a hand-written one),
    generates its own, so the API server would refuse the scheduler's tokens and the UI could not fetch logs.
    Only the keys are written; every other option keeps its default or comes from :func:`airflow_env`. An
    existing file keeps every line (the user's values and comments); a key it holds is never replaced. Mode 0600.
    """
    path = airflow_home(settings) / CONFIG_FILE

    def key(n: int) -> str:
        return base64.urlsafe_b64encode(os.urandom(n)).decode()

    try:
        text = path.read_text()
    except FileNotFoundError:
        _write_private(
            path,
            "# Written by tenfold.local.airflow.ensure_airflow_config: the keys Airflow's components share.\n"
            + "\n".join(f"[{section}]\n{option} = {key(n)}\n" for section, option, n in SHARED_KEYS),
        )
        return path
    except UnicodeDecodeError as exc:  # a Latin-1 comment: "a fault in the code" from the root guard before
        raise LocalPlatformError(f"{path} is not a configuration file Airflow can read (not UTF-8 text: {exc.reason} "
                                 f"at byte {exc.start}): fix it, or delete it and run `tenfold up` to write a new "
                                 "one") from exc
    held = _parse_config(path, text)
    missing = [(section, option, key(n)) for section, option, n in SHARED_KEYS if not _config_value(held, section, option)]
    if not missing:
        path.chmod(0o600)
        return path
    text = _with_options(text, missing)
    added = _parse_config(path, text)
    if any(_config_value(added, section, option) != value for section, option, value in missing):
        raise LocalPlatformError(f"{path} lacks {', '.join(f'[{s}] {o}' for s, o, _ in missing)}, and they could not "
                                 "be added to it: set them yourself (each a long random string), or delete the file "
                                 "and run `tenfold up` to write a new one")
    _write_private(path, text)
    return path


def _parse_config(path: Path, text: str) -> configparser.ConfigParser:
    """``text`` of ``path`` read as Airflow reads it (strict: a section or an option twice is an error)."""
    parser = configparser.ConfigParser(interpolation=None)  # values as written: a key may hold a %
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise LocalPlatformError(f"{path} is not a configuration file Airflow can read ({' '.join(str(exc).split())}): "
                                 "fix it, or delete it and run `tenfold up` to write a new one") from exc
    return parser


def _config_value(parser: configparser.ConfigParser, section: str, option: str) -> str:
    return parser.get(section, option, fallback="").strip()


def _with_options(text: str, options: list[tuple[str, str, str]]) -> str:
    """``text`` with each ``(section, option, value)`` of ``options`` set: an empty ``option =`` line of that section
    replaced, or else the line added under the section's header, or else the section added at the end. Every other
    line stays as it was."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for section, option, value in options:
        line_of_option = f"{option} = {value}\n"
        header = empty = None
        current = None
        for i, line in enumerate(lines):
            found = configparser.ConfigParser.SECTCRE.match(line.strip())
            if found:
                current = found.group("header")
                header = i if current == section and header is None else header
                continue
            found = configparser.ConfigParser.OPTCRE.match(line.strip())
            if (current == section and found and not line[0].isspace()
                    and found.group("option").strip().lower() == option and not found.group("value").strip()):
                empty = i
        if empty is not None:
            lines[empty] = line_of_option
        elif header is not None:
            lines.insert(header + 1, line_of_option)
        else:
            lines += [*(["\n"] if lines and lines[-1].strip() else []), f"[{section}]\n", line_of_option]
    return "".join(lines)


def _migrated_marker(env: Mapping[str, str]) -> Path:
    return Path(env["AIRFLOW_HOME"]) / ".tenfold-db-migrated"


def _template_db(airflow_version: str) -> Path:
    """A freshly migrated, empty SQLite database per Airflow version, shared by every home on the machine."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tenfold" / f"airflow-{airflow_version}-empty.sqlite"


# How long an Airflow process waits for SQLite's write lock (sqlite3's ``timeout``), in the connect arguments the two
# settings above name. Two dicts: Airflow adds its own keys to the sync one.
SQLITE_CONNECT_ARGS: dict[str, object] = {"timeout": 30.0}
SQLITE_CONNECT_ARGS_ASYNC: dict[str, object] = {"timeout": 30.0}


def _sqlite_path(env: Mapping[str, str]) -> Path | None:
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # one per writer
    try:
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the copy's bytes are on disk before its name replaces dst
        finally:
            os.close(fd)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a copy that failed (a full disk) leaves no tmp to fill it further
        raise


def _damage(db: Path) -> str | None:
    """What is wrong with the SQLite database ``db`` that the migration marker vouches for (None when nothing is):
    not a database (garbage, a torn copy), damaged pages, or no migration in it (an empty file, another tool's
    database). Read-only; a database another process holds locked is taken as sound.

    A database that cannot be opened for a reason outside it (a full disk, a folder this user cannot write: SQLite
    must make the WAL's ``-shm`` index beside it, which a clean stop deleted) is no damage: that is refused with
    :func:`_unreachable`'s message, which names the disk or the permission, and never advises moving it aside."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
            check = conn.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                return f"is damaged (SQLite's quick_check: {check[0] if check else 'no answer'})"
            conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return None
        if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):  # "file is not a database", "malformed"
            return f"is not a sound SQLite database ({exc})"
        if "no such table" in str(exc):
            return "holds no Airflow migration (no alembic_version table: an empty file, or another tool's database)"
        raise LocalPlatformError(_unreachable(db, exc, primary)) from exc
    return None


# Less free space than this beside a WAL database that SQLite cannot open: its -shm index (32 KiB) found no room.
_SHM_ROOM = 64 * 1024


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _unreachable(db: Path, exc: Exception, primary: int | None) -> str:
    """The refusal for a database ``db`` SQLite could not open or read for a reason outside the file (``exc``, its
    primary result code ``primary``): what was found on its folder, and what to do."""
    import sqlite3

    folder, where = db.parent, shlex.quote(str(db.parent))
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    needs = f"SQLite must write the database's shared-memory index ({db.name}-shm) beside it to read it"
    if _read_only_fs(folder):
        cause = f"{folder} is on a read-only file system: {needs}"
        todo = f"Mount the file system holding {folder} read-write (`findmnt -T {where}` names it)"
    elif not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.R_OK | os.W_OK)):
        cause = f"{folder} (or the database in it) cannot be written by this user: {needs}"
        todo = f"Give this user read and write permission on {folder} and the files in it (`ls -la {where}`)"
    elif primary == sqlite3.SQLITE_FULL or (free is not None and free < _SHM_ROOM):
        cause = f"the disk holding {folder} is full ({free if free is not None else 'unknown'} bytes free): {needs}"
        todo = f"Free space on that disk (`df -h {where}` shows it)"
    else:
        cause = "SQLite could not open or read it there (a disk or permission problem)"
        todo = f"Check the disk holding {folder} (`df -h {where}`) and its permissions (`ls -la {where}`)"
    return (f"Airflow's metadata database {db} cannot be opened ({name}: {exc}): {cause}. Nothing was found wrong in "
            f"the database itself and it is left as it is (the DAG runs' history is in it). {todo}, then run "
            "`tenfold up` again")


def _journals(db: Path) -> list[tuple[str, Path]]:
    """The files SQLite keeps beside ``db`` (suffix, path): the write-ahead log and its index (Airflow turns WAL mode
    on) and the rollback journal."""
    return [(suffix, db.with_name(db.name + suffix)) for suffix in ("-wal", "-shm", "-journal")]


def _remove_stale_journals(db: Path) -> None:
    """Remove the journal files an earlier database left beside the missing ``db`` (after an unclean stop: a crash, an
    OOM kill). SQLite does not check which database a WAL belongs to: the first connection to the new database would
    replay the old one's pages onto it."""
    for _, path in _journals(db):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalPlatformError(
                f"cannot remove {path}, left beside the missing Airflow database {db} by an earlier one "
                f"({exc.strerror or exc}): SQLite would replay it onto the new database. Remove it (or move it aside "
                "with the old database) and run `tenfold up` again") from exc


def ensure_airflow_db(env: Mapping[str, str], *, timeout: float = 300.0) -> None:
    """Run ``airflow db migrate`` once for ``env``'s AIRFLOW_HOME; later calls return at once.

    A marker beside the database records the migration; it is written only after the command
    succeeded and holds the database URL and Airflow version, so a new Airflow re-migrates. Migrating
    an empty SQLite database takes 20-30 s on two cores, so the first result is kept as a template
    (in ``~/.cache/tenfold``) and later new homes (test sessions, a fresh ``make up``) start from a copy.
    """
    from importlib.metadata import version

    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    marker = _migrated_marker(env)
    airflow_version = version("apache-airflow")
    stamp = json.dumps({"db": env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"), "airflow": airflow_version})
    db, template = _sqlite_path(env), _template_db(airflow_version)
    # The marker vouches for the database beside it: a deleted database (the usual way to reset Airflow) is
    # migrated again, not handed to the components empty.
    if marker.exists() and marker.read_text() == stamp and (db is None or db.exists()):
        if db is not None and (damage := _damage(db)) is not None:
            # Its journal files go with it, under the names SQLite looks for beside the moved copy: the WAL can hold
            # the newest of its data, and left beside the new database it would be replayed onto it.
            move = " && ".join(f"mv {shlex.quote(str(path))} {shlex.quote(str(db) + '.damaged' + suffix)}"
                               for suffix, path in [("", db), *_journals(db)] if path == db or path.exists())
            raise LocalPlatformError(
                f"Airflow's metadata database {db} {damage}: its five components would fail to start on it, each with a "
                f"traceback. Move it aside with its SQLite journal files (`{move}`) and run `tenfold up` again, which "
                "makes a new one (the DAG runs' history and the variables in it are lost; the lake, the registry and "
                "the models are not in it)")
        return
    if db is not None and not db.exists():
        _remove_stale_journals(db)
    if db is not None and not db.exists() and template.is_file():
        _atomic_copy(template, db)
        marker.write_text(stamp)
        return
    fresh = db is not None and not db.exists()
    airflow = Path(env.get("PATH", "").split(os.pathsep)[0]) / "airflow"
    cmd = [str(airflow) if airflow.exists() else "airflow", "db", "migrate"]
    proc = run_bounded(cmd, env=env, timeout=timeout)  # a hang is stopped with every process it started
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"`airflow db migrate` failed (AIRFLOW_HOME={home}):\n{tail}")
    if fresh and db is not None and not template.exists():
        with contextlib.suppress(OSError):  # only a cache: a read-only home directory is fine
            _atomic_copy(db, template)
    marker.write_text(stamp)
