"""Airflow as Tenfold runs it locally: its components, its generated secrets and its loopback log server.

The platform itself (all components started, killed, restarted) is tested in
tests/integration/test_local_platform.py; these are the parts that need no running Airflow.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tenfold.local import airflow_env, ensure_admin_password, free_port, local_settings, process
from tenfold.local.airflow import PASSWORDS_FILE, admin_password, airflow_home, ensure_airflow_config
from tenfold.local.services import AIRFLOW_COMPONENTS, airflow_service


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_airflow_runs_as_components_and_none_of_them_is_standalone(tmp_path):
    s = local_settings(tmp_path, airflow_port=18080, airflow_log_port=18793, airflow_trigger_log_port=18794)
    svc = airflow_service(s)
    assert tuple(c.name for c in svc.components) == AIRFLOW_COMPONENTS
    argv = {c.name: c.argv for c in svc.components}
    assert not any("standalone" in a for a in argv.values())
    assert argv["airflow-api-server"][1:] == ["api-server", "--host", "127.0.0.1", "--port", "18080"]
    # Their own log servers would listen on every interface: the loopback one serves the logs instead.
    assert "--skip-serve-logs" in argv["airflow-scheduler"] and "--skip-serve-logs" in argv["airflow-triggerer"]
    assert argv["airflow-log-server"][1:] == ["-m", "tenfold.local.airflow_logs"]
    assert svc.ports == {"airflow_port": 18080, "airflow_log_port": 18793, "airflow_trigger_log_port": 18794}
    env = airflow_env(s)
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "tenfold.local.airflow.loopback_hostname"
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"


def test_the_admin_password_is_generated_once_and_private(tmp_path):
    s = local_settings(tmp_path)
    path = airflow_home(s) / PASSWORDS_FILE
    assert admin_password(s) is None
    password = ensure_admin_password(s)
    assert len(password) >= 20 and _mode(path) == 0o600
    assert json.loads(path.read_text()) == {s.airflow.admin_user: password}
    assert ensure_admin_password(s) == password == admin_password(s)  # idempotent: never regenerated


def test_a_world_readable_password_file_from_standalone_is_made_private_and_kept(tmp_path):
    s = local_settings(tmp_path)
    path = airflow_home(s) / PASSWORDS_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({s.airflow.admin_user: "from-standalone", "other": "x"}))
    path.chmod(0o644)
    assert ensure_admin_password(s) == "from-standalone"
    assert _mode(path) == 0o600


def test_an_unreadable_password_file_is_a_clear_error(tmp_path):
    s = local_settings(tmp_path)
    path = airflow_home(s) / PASSWORDS_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match=rf"{PASSWORDS_FILE} is not JSON.*delete it and run `tenfold up`"):
        ensure_admin_password(s)


_SHARED = (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))


def _shared_keys(path) -> dict[tuple[str, str], str]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    return {(sec, opt): cfg.get(sec, opt, fallback="") for sec, opt in _SHARED}


def test_airflow_cfg_holds_the_shared_keys_privately_and_is_never_overwritten(tmp_path):
    s = local_settings(tmp_path)
    path = ensure_airflow_config(s)
    assert _mode(path) == 0o600
    keys = _shared_keys(path)
    assert all(len(v) >= 40 for v in keys.values()) and len(set(keys.values())) == 3
    text = path.read_text()
    assert ensure_airflow_config(s) == path and path.read_text() == text  # a second start shares the same keys
    # An airflow.cfg that Airflow wrote itself (`airflow db migrate`, all keys in it) is kept as it is, and made private.
    written = "# by Airflow\n[core]\nfernet_key = mine\n\n[api]\nsecret_key = its\n\n[api_auth]\njwt_secret = ours\n"
    path.write_text(written)
    path.chmod(0o644)
    ensure_airflow_config(s)
    assert path.read_text() == written and _mode(path) == 0o600


@pytest.mark.parametrize("existing", [
    "[core]\nfernet_key = mine\n",  # hand-written: the other two keys missing
    # An Airflow 2 home's: its session secret is [webserver]'s, its Fernet key empty, no [api] nor [api_auth].
    "# Airflow 2\n[core]\n# the Fernet key\nfernet_key =\ndags_folder = /x/dags\n\n[webserver]\nsecret_key = old\n"
    "[api_auth]\nbackend = x\n",
])
def test_an_existing_airflow_cfg_without_the_shared_keys_gets_them_and_keeps_the_rest(tmp_path, existing):
    """Kept as it was, an airflow.cfg without [api] secret_key or [api_auth] jwt_secret let each component generate
    its own: the API server refused the scheduler's task tokens and the UI could not fetch logs."""
    s = local_settings(tmp_path)
    path = airflow_home(s) / "airflow.cfg"
    path.parent.mkdir(parents=True)
    path.write_text(existing)
    path.chmod(0o644)
    ensure_airflow_config(s)
    keys = _shared_keys(path)
    assert all(keys.values()), keys
    assert _mode(path) == 0o600
    text = path.read_text()
    before = configparser.ConfigParser(interpolation=None)
    before.read_string(existing)
    after = configparser.ConfigParser(interpolation=None)
    after.read_string(text)
    for section in before.sections():  # every value the user set is there as it was, an empty key excepted
        for option, value in before.items(section):
            assert after.get(section, option) == value or (not value and (section, option) in _SHARED)
    assert all(line in text.splitlines() for line in existing.splitlines() if line.startswith("#"))  # comments too
    if "fernet_key = mine" in existing:
        assert keys[("core", "fernet_key")] == "mine"  # never replaced
    ensure_airflow_config(s)
    assert path.read_text() == text  # a second start changes nothing: the same keys for every component


@pytest.mark.parametrize("body", [b"fernet_key = no section\n", b"[core]\n# caf\xe9 (Latin-1)\nfernet_key = x\n"],
                         ids=["no-section", "not-utf8"])
def test_an_airflow_cfg_airflow_cannot_read_is_named_not_rewritten(tmp_path, body):
    s = local_settings(tmp_path)
    path = airflow_home(s) / "airflow.cfg"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    with pytest.raises(process.LocalPlatformError, match=r"airflow.cfg is not a configuration file Airflow can read "
                                                         r"\(.*\): fix it, or delete it and run `tenfold up`"):
        ensure_airflow_config(s)
    assert path.read_bytes() == body


def test_the_log_server_names_a_busy_port_and_how_to_choose_another(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        s = local_settings(tmp_path, airflow_log_port=busy, airflow_trigger_log_port=free_port())
        result = subprocess.run([sys.executable, "-m", "tenfold.local.airflow_logs"], env=airflow_env(s),
                                capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1 ports {busy} and" in result.stderr
    assert "TENFOLD_LOCAL__AIRFLOW_LOG_PORT" in result.stderr and "Traceback" not in result.stderr


def test_waiting_for_components_fails_at_once_when_another_one_dies(tmp_path):
    slow = process.start("slow", ["sleep", "300"], run_dir=tmp_path, port=0)
    crash = process.start("crash", [sys.executable, "-c", "print('bad flag'); raise SystemExit(2)"], run_dir=tmp_path, port=0)
    try:
        started = time.monotonic()
        with pytest.raises(process.LocalPlatformError, match=r"crash \(starting with slow\) exited(.|\n)*bad flag"):
            process.wait_until(lambda: False, timeout=60, what="slow", record=slow, watch=[slow, crash])
        assert time.monotonic() - started < 30  # long before its own timeout
    finally:
        process.stop(slow, timeout=5)
    assert os.path.exists(tmp_path / "crash.log")


def test_a_heartbeat_counts_only_for_the_live_process_that_sent_it(tmp_path):
    """Airflow reports the newest job's heartbeat; after a SIGKILL the dead scheduler's stays "healthy" for
    30 s. It must neither vouch for the killed process nor for one started after it."""
    from datetime import UTC, datetime, timedelta

    import psutil

    from tenfold.local.services import _beats_since_start

    record = process.start("airflow-scheduler", ["sleep", "300"], run_dir=tmp_path, port=0)
    started_at = datetime.fromtimestamp(psutil.Process(record.pid).create_time(), UTC)

    def report(beat: datetime, status: str = "healthy") -> dict[str, dict[str, object]]:
        return {"scheduler": {"status": status, "latest_scheduler_heartbeat": beat.isoformat()}}

    try:
        assert _beats_since_start(report(started_at + timedelta(seconds=5)), "scheduler", tmp_path, "airflow-scheduler")
        assert not _beats_since_start(report(started_at - timedelta(seconds=60)), "scheduler", tmp_path, "airflow-scheduler")
        assert not _beats_since_start(report(started_at + timedelta(seconds=5), "unhealthy"), "scheduler", tmp_path,
                                      "airflow-scheduler")
    finally:
        psutil.Process(record.pid).kill()
    # Killed: whatever the report says (the zombie keeps its start time until it is reaped).
    deadline = time.monotonic() + 10
    while process.is_running(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _beats_since_start(report(started_at + timedelta(seconds=5)), "scheduler", tmp_path, "airflow-scheduler")
    process.stop(record, timeout=5)


def test_a_deleted_airflow_database_is_migrated_again(tmp_path):
    """Deleting airflow.db is the usual way to reset Airflow: the next `tenfold up` must migrate a new one, not
    hand the components an empty file because the migration marker is still there."""
    import sqlite3

    from tenfold.local import ensure_airflow_db

    env = airflow_env(local_settings(tmp_path))
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    ensure_airflow_db(env)
    os.unlink(db)
    ensure_airflow_db(env)
    assert os.path.exists(db), "the deleted database was not migrated again"
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"dag", "dag_run", "task_instance", "alembic_version"} <= tables


def _tables(db: Path) -> list[tuple[str, str, str]]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))


def _killed_with_its_commits_in_the_wal(db: Path) -> None:
    """What an unclean stop of Airflow (a crash, an OOM kill, kill -9) leaves: ``db`` in WAL mode, as Airflow turns it
    on, with committed rows that were never checkpointed into it, and its ``-wal`` and ``-shm`` beside it."""
    script = ("import sqlite3, sys, time\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "assert conn.execute('PRAGMA journal_mode=WAL').fetchone()[0] == 'wal'\n"
              "conn.execute('PRAGMA wal_autocheckpoint=0')\n"  # the commits stay in the WAL
              "conn.execute('BEGIN')\n"
              "conn.execute('CREATE TABLE old_runs (id INTEGER PRIMARY KEY, note TEXT)')\n"
              "conn.executemany('INSERT INTO old_runs (note) VALUES (?)', [(f'run {i}',) for i in range(100)])\n"
              "conn.execute('COMMIT')\n"
              "print('committed', flush=True)\n"
              "time.sleep(300)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)  # a real kill: no close, no checkpoint, the WAL stays
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert Path(f"{db}-wal").stat().st_size > 0 and Path(f"{db}-shm").exists()


def _home_from_a_template(tmp_path: Path, monkeypatch) -> tuple[dict[str, str], Path, Path]:
    """An Airflow home whose database was made from a cached template (one with a table of its own, so that a copy of
    it is told from anything else), as ensure_airflow_db makes them; the env, the database and the template."""
    import sqlite3
    from importlib.metadata import version

    from tenfold.local import ensure_airflow_db
    from tenfold.local.airflow import _template_db

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = _template_db(version("apache-airflow"))
    template.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(template)) as conn:
        conn.execute("CREATE TABLE template_only (id INTEGER PRIMARY KEY)")
        conn.commit()
    env = airflow_env(local_settings(tmp_path / "home"))
    db = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    ensure_airflow_db(env)
    assert _tables(db) == _tables(template)
    return env, db, template


def test_a_new_airflow_database_gets_none_of_a_stale_wal_left_beside_the_old_one(tmp_path, monkeypatch):
    """SQLite does not check which database a WAL belongs to: after Airflow was killed and airflow.db moved aside (or
    deleted, to reset Airflow), the new database was made beside the old one's -wal and -shm, and the first connection
    replayed the old database's pages onto it: the new database held the old one's tables."""
    from tenfold.local import ensure_airflow_db

    env, db, template = _home_from_a_template(tmp_path, monkeypatch)
    _killed_with_its_commits_in_the_wal(db)
    db.rename(f"{db}.damaged")  # airflow.db alone, as the refusal's advice said and `rm airflow.db` does
    ensure_airflow_db(env)
    assert _tables(db) == _tables(template), "the new database holds the old one's tables, replayed from its WAL"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


def test_a_stale_wal_that_cannot_be_removed_is_refused_by_name(tmp_path, monkeypatch):
    """A -wal that cannot be removed would be replayed onto the new database: refused, naming it, before one is made."""
    from tenfold.local import ensure_airflow_db
    from tenfold.local.process import LocalPlatformError

    env, db, _ = _home_from_a_template(tmp_path, monkeypatch)
    db.unlink()
    Path(f"{db}-wal").mkdir()  # unlink() fails on it with EISDIR, whoever runs the test (root included)
    with pytest.raises(LocalPlatformError, match=rf"cannot remove {re.escape(str(db))}-wal, .*run `tenfold up` again"):
        ensure_airflow_db(env)
    assert not db.exists(), "a new database was made beside the WAL it would replay"


def test_the_advice_for_a_damaged_database_moves_its_wal_with_it(tmp_path, monkeypatch):
    """`mv airflow.db airflow.db.damaged` left the WAL (the newest of the damaged database's data) behind, beside the
    new database: the advice moves every journal file there is with the database, under the names SQLite reads
    beside the moved copy."""
    from tenfold.local import ensure_airflow_db
    from tenfold.local.process import LocalPlatformError

    env, db, template = _home_from_a_template(tmp_path, monkeypatch)
    _killed_with_its_commits_in_the_wal(db)
    wal = Path(f"{db}-wal").read_bytes()
    db.write_bytes(b"not a database at all " * 200)
    with pytest.raises(LocalPlatformError) as refusal:
        ensure_airflow_db(env)
    move = re.search(r"\(`(mv .*?)`\)", str(refusal.value))
    assert move is not None, str(refusal.value)
    subprocess.run(["sh", "-c", move.group(1)], check=True)
    assert Path(f"{db}.damaged-wal").read_bytes() == wal and Path(f"{db}.damaged").exists()
    assert not any(Path(f"{db}{suffix}").exists() for suffix in ("", "-wal", "-shm", "-journal"))
    ensure_airflow_db(env)
    assert _tables(db) == _tables(template)


@pytest.mark.parametrize("damage", ["garbage", "empty", "torn"])
def test_a_damaged_airflow_database_is_refused_by_name_before_any_component_starts(tmp_path, damage):
    """The migration marker vouched for whatever file was there: a database overwritten, emptied or cut short went to
    all five components, and `tenfold up` ended on "exited before it became healthy" and a traceback's tail, naming
    neither the file nor what to do."""
    import sqlite3

    from tenfold.local import ensure_airflow_db
    from tenfold.local.process import LocalPlatformError

    env = airflow_env(local_settings(tmp_path))
    db = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    ensure_airflow_db(env)
    with sqlite3.connect(db) as conn:  # sound: the marker's database is checked and handed on
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    ensure_airflow_db(env)
    whole = db.read_bytes()
    db.write_bytes({"garbage": b"not a database at all " * 200, "empty": b"", "torn": whole[: len(whole) // 3]}[damage])
    with pytest.raises(LocalPlatformError, match=rf"metadata database {re.escape(str(db))} .*mv {re.escape(str(db))} "
                                                 rf"{re.escape(str(db))}\.damaged"):
        ensure_airflow_db(env)


def _a_sound_wal_database_closed_cleanly(tmp_path: Path, monkeypatch, folder: Path) -> tuple[dict[str, str], Path]:
    """An Airflow home under ``folder`` whose database the marker vouches for: a migrated one (as small as one gets,
    from a template), in WAL mode as Airflow turns it on, with a DAG run in it, closed cleanly (as `tenfold down`
    stops Airflow: no -wal, no -shm left). The env and the database."""
    import sqlite3
    from importlib.metadata import version

    from tenfold.local import ensure_airflow_db
    from tenfold.local.airflow import _template_db

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = _template_db(version("apache-airflow"))
    template.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(template)) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('29ce7909c52b')")
        conn.commit()
    env = airflow_env(local_settings(folder / "home"))
    db = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    ensure_airflow_db(env)  # the copy, and its marker
    with contextlib.closing(sqlite3.connect(db)) as conn:  # Airflow's run, then its clean stop
        conn.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT)")
        conn.execute("INSERT INTO dag_run (dag_id) VALUES ('build_features')")
        conn.commit()
    assert db.is_relative_to(folder) and not any(Path(f"{db}{s}").exists() for s in ("-wal", "-shm")), "not clean"
    return env, db


def _dag_runs(db: Path) -> list[tuple[str]]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT dag_id FROM dag_run").fetchall()


def test_a_sound_airflow_database_on_a_full_disk_is_refused_as_a_full_disk_never_as_damage(
        tmp_path, monkeypatch, small_disk):
    """Airflow's database is in WAL mode: opening it (read-only too) makes its -shm index, which a clean `tenfold down`
    deleted. On a full disk that failed with "disk I/O error", and the check took it for damage: the refusal advised
    moving the sound database aside and letting `tenfold up` make a new one, the DAG runs' history lost."""
    from tenfold.local import ensure_airflow_db
    from tenfold.local.process import LocalPlatformError

    env, db = _a_sound_wal_database_closed_cleanly(tmp_path, monkeypatch, small_disk.path)
    whole = db.read_bytes()
    small_disk.fill()
    with pytest.raises(LocalPlatformError) as refusal:
        ensure_airflow_db(env)
    message = str(refusal.value)
    assert f"metadata database {db} cannot be opened" in message, message
    assert f"the disk holding {db.parent} is full" in message and f"df -h {db.parent}" in message, message
    assert "Move it aside" not in message and "damaged" not in message and "mv " not in message, message
    assert db.read_bytes() == whole
    small_disk.free()  # with room again, the same database is vouched for and handed on as it was
    ensure_airflow_db(env)
    assert db.read_bytes() == whole and _dag_runs(db) == [("build_features",)]


def test_a_sound_airflow_database_on_a_read_only_file_system_is_refused_as_such_never_as_damage(
        tmp_path, monkeypatch, small_disk):
    """A folder SQLite cannot write (here a file system remounted read-only, which binds root too) fails the same
    open ("unable to open database file": no -shm can be made), and was taken for damage as well."""
    from tenfold.local import ensure_airflow_db
    from tenfold.local.process import LocalPlatformError

    env, db = _a_sound_wal_database_closed_cleanly(tmp_path, monkeypatch, small_disk.path)
    whole = db.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk.path)], check=True, capture_output=True)
    try:
        with pytest.raises(LocalPlatformError) as refusal:
            ensure_airflow_db(env)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk.path)], check=True, capture_output=True)
    message = str(refusal.value)
    assert f"metadata database {db} cannot be opened" in message, message
    assert f"{db.parent} is on a read-only file system" in message and "read-write" in message, message
    assert "Move it aside" not in message and "damaged" not in message and "mv " not in message, message
    assert db.read_bytes() == whole
    ensure_airflow_db(env)  # writable again: the same database, handed on as it was
    assert db.read_bytes() == whole and _dag_runs(db) == [("build_features",)]
