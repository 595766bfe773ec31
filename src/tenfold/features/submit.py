"""Launch ``spark_jobs/build_features.py`` with the venv's ``spark-submit`` (the local column).

``spark_submit_features(settings, part, output_uri)`` is what the build_features DAG calls when
``settings.env == "local"``; in dev and prod the same job file runs as a Dataproc batch. The child gets
the settings' master (``local[2,4]``: 2 cores, up to 4 attempts per task), driver memory and driver JVM
options (``settings.spark.driver_java_options``), the driver's class-data-sharing archive
(:func:`class_sharing`), quiet logs, the driver and its block manager bound to loopback with no UI
(:func:`loopback_conf`), the settings' workload (``--workload``) and features table, and runs under a
wall-clock limit; a failure raises :class:`SparkJobError` with the exit code and the tail of the job's
output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import Settings, project_root
from tenfold.data.lake import Partition
from tenfold.features.dataproc import layout_args

log = logging.getLogger(__name__)

JOB_FILE = Path("spark_jobs") / "build_features.py"
LOG_TAIL_LINES = 40


class SparkJobError(RuntimeError):
    """spark-submit exited non-zero or timed out; ``returncode`` 2 means bad or missing input."""

    def __init__(self, message: str, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


def loopback_conf(host: str = "127.0.0.1") -> dict[str, str]:
    """Spark conf that keeps a local-mode job on ``host`` (``settings.local.bind_host``, loopback).

    Without it, when the machine's host name resolves to a loopback address, Spark picks the first
    interface address instead ("Your hostname resolves to a loopback address ... using <address>") and
    its driver RPC and block manager listen there for the whole job; the UI would listen on all
    interfaces. The block manager binds to the driver's bind address; the UI is off.
    """
    return {"spark.driver.bindAddress": host, "spark.driver.host": host, "spark.ui.enabled": "false"}


JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# Where the driver JVM's class-data-sharing archives live: beside the venv whose Spark they hold.
CLASS_ARCHIVES = Path(sys.prefix) / "var" / "tenfold-spark-cds"
# A writer's lock older than this is a writer that died (writing takes ~30 s).
CLASS_ARCHIVE_LOCK_STALE_S = 1800.0
# A job that failed while writing the archive (the JVM exits 1 when it cannot write it, a full disk) is
# retried without writing one; the next attempt to write comes after this long.
CLASS_ARCHIVE_RETRY_S = 3600.0
CLASS_ARCHIVE_MIN_FREE = 2 * 1024**3  # an archive is ~190 MB; never write one on a nearly full disk


def submit_prefix(settings: Settings, extra_conf: Mapping[str, str] | None = None) -> list[str]:
    """``spark-submit`` with the settings' master, driver memory and the local conf, up to the job file
    (every Tenfold job is launched with the same prefix)."""
    conf = {
        **loopback_conf(settings.local.bind_host),
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.log.level": "WARN",
        JAVA_OPTIONS: settings.spark.driver_java_options,
        **(extra_conf or {}),
    }
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", settings.spark.master,
           "--driver-memory", settings.spark.driver_memory]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd


def spark_submit_command(
    settings: Settings,
    part: Partition,
    output_uri: str,
    *,
    publish: bool = False,
    extra_conf: Mapping[str, str] | None = None,
    run_id: str | None = None,
    lake_uri: str | None = None,
) -> list[str]:
    """The spark-submit argv (useful to print, and what :func:`spark_submit_features` runs)."""
    cmd = submit_prefix(settings, extra_conf)
    cmd += [
        str(project_root() / JOB_FILE),
        "--lake-uri", lake_uri or settings.storage.lake_uri,
        "--month", part.label,
        "--output", output_uri,
        # The job runs in a fresh process without the settings: it learns the workload from its argv.
        "--workload", settings.workload,
        "--features-table", settings.storage.features_table, "--lookups-table", settings.storage.lookups_table,
        *layout_args(settings),
    ]
    if publish:
        cmd.append("--publish")
    if run_id:
        cmd += ["--run-id", run_id]
    return cmd


def spark_env(base: Mapping[str, str] | None = None, *, bind_host: str = "127.0.0.1") -> dict[str, str]:
    """Environment for spark-submit: the venv's Python on both sides, its bin first on PATH, and
    ``SPARK_LOCAL_IP`` (the address Spark resolves for itself before any conf applies) on ``bind_host``; no alert
    hook's variable (a webhook URL is a secret, and the job never alerts: its task does)."""
    from tenfold.local.env import without_alert_hook_variables

    env = without_alert_hook_variables(os.environ if base is None else base)
    env["SPARK_LOCAL_IP"] = bind_host
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.pop("SPARK_HOME", None)  # let pyspark's own find-spark-home pick the installed distribution
    return env


def spark_submit_features(
    settings: Settings,
    part: Partition,
    output_uri: str,
    *,
    publish: bool = False,
    extra_conf: Mapping[str, str] | None = None,
    run_id: str | None = None,
    lake_uri: str | None = None,
    timeout_s: float = 900,
    record: Path | None = None,
) -> str:
    """Run the build-features job for ``part`` into ``output_uri``; returns the job's output.

    Raises :class:`SparkJobError` (with the last lines of the log) on a non-zero exit or a timeout;
    the child and its JVM are killed on timeout, and ``output_uri`` is then not to be trusted. ``record``: see
    :func:`run_submit`.
    """
    cmd = spark_submit_command(
        settings, part, output_uri, publish=publish, extra_conf=extra_conf, run_id=run_id, lake_uri=lake_uri
    )
    return run_submit(cmd, f"build_features for {part.label}", settings=settings, timeout_s=timeout_s, record=record)


# A job left running by a try that was killed outright is stopped by the next: SIGTERM, then SIGKILL after this long.
EARLIER_JOB_GRACE_S = 10.0


def job_record(settings: Settings, output_uri: str) -> Path:
    """Where the job writing ``output_uri`` is recorded while it runs (:func:`run_submit`'s ``record``): a local
    folder of the home, keyed by the output, so that every try into one output (a gs:// one too) finds it."""
    key = hashlib.sha256(output_uri.rstrip("/").encode()).hexdigest()[:16]
    return settings.local.home / "spark-jobs" / f"{key}.json"


def stop_earlier_job(record: Path, *, grace_s: float = EARLIER_JOB_GRACE_S) -> None:
    """Stop the job recorded at ``record`` if it still runs: what a try killed outright (an Airflow task SIGKILLed)
    left behind. Such a try's cleanup never ran, and its spark-submit, in a session of its own, went on writing the
    output (its lookups are rewritten in place) beside the next try's job. The process group is stopped
    (``tenfold.local.process.stop``: SIGTERM, SIGKILL after ``grace_s``) only while its leader's pid and start time
    are the recorded ones: a recycled pid is never signalled. Raises :class:`SparkJobError` if it does not stop."""
    from tenfold.local.process import ProcessRecord, is_running, stop

    try:
        earlier = ProcessRecord.from_json(record.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError) as exc:  # identifies nothing: never acted on
        log.warning("ignoring the unreadable job record %s (%s)", record, exc)
        earlier = None
    if earlier is not None and is_running(earlier):
        log.warning("an earlier try left its spark-submit (pid %d) running into this try's output: stopping it first",
                    earlier.pid)
        stop(earlier, timeout=grace_s)
        if is_running(earlier):
            raise SparkJobError(f"an earlier try's spark-submit (pid {earlier.pid}, process group {earlier.pid}) is "
                                f"still writing this job's output and did not stop: kill it (kill -9 -{earlier.pid}) "
                                "and retry", None, "")
    with contextlib.suppress(OSError):
        record.unlink(missing_ok=True)


def _record_job(record: Path, pid: int, what: str) -> None:
    """Write ``record``: the job's leader (pid and start time, as ``tenfold.local.process`` identifies a process).
    Raises :class:`SparkJobError` when it cannot (the caller then stops the job: unrecorded, a later try could not).

    Without a marker (``tenfold.local.process.MARKER_ENV``): the job inherits the one of the process that started
    Airflow, which names the scheduler and all it started, and stopping by it would stop them all."""
    import psutil

    from tenfold.fsio import atomic_write
    from tenfold.local.process import record_of

    try:
        entry = record_of(psutil.Process(pid), "spark-submit")
    except psutil.Error:  # it has ended already: nothing a later try could stop
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(record, entry.to_json().encode())
    except OSError as exc:
        raise SparkJobError(f"{what} was stopped: its process could not be recorded in {record} "
                            f"({exc.strerror or exc}); free the disk or fix the folder's permissions, then retry",
                            None, "") from exc


def run_submit(cmd: list[str], what: str, *, settings: Settings, timeout_s: float, record: Path | None = None) -> str:
    """Run a spark-submit ``cmd`` (``what`` names it in errors) under a wall-clock limit; returns its output.

    The driver JVM maps the class-data-sharing archive (:func:`class_sharing`) when
    ``settings.spark.class_sharing`` is on. Raises :class:`SparkJobError` with the last lines of the log on a
    non-zero exit (2: bad or missing input) or a timeout, after killing the child's whole process group (the
    JVM is a grandchild).

    Spark's scratch (``SPARK_LOCAL_DIRS``: shuffle blocks, ``spark-*`` folders) and the job's temporary files go
    to a folder of this call's own, removed when it returns: a killed JVM runs no shutdown hook, and left its
    shuffle data in ``/tmp`` on every timeout.

    ``record`` (:func:`job_record`): where the job's process is recorded while it runs, for a later try to stop it
    (:func:`stop_earlier_job`) when this call is killed outright and its cleanup never runs; removed once the job is
    over.
    """
    base = spark_env(bind_host=settings.local.bind_host)
    # Inside the disk the user chose for Spark's scratch (SPARK_LOCAL_DIRS, its first folder), if any.
    where = next((d for d in base.get("SPARK_LOCAL_DIRS", "").split(",") if d and os.path.isdir(d)), None)
    with class_sharing(cmd, enabled=settings.spark.class_sharing) as archive, \
            tempfile.TemporaryDirectory(prefix="tenfold-spark-", dir=where, ignore_cleanup_errors=True) as scratch:
        cmd = with_java_option(cmd, archive.option) if archive.option else cmd
        env = {**base, "SPARK_LOCAL_DIRS": scratch, "TMPDIR": scratch}
        with tempfile.TemporaryFile(mode="w+") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                if record is not None:
                    _record_job(record, proc.pid, what)  # inside: a failure to write it (a full disk) still stops the job
                code = proc.wait(timeout=timeout_s)
            except BaseException as exc:
                # Past its bound, or interrupted while waiting (Airflow's task timeout or termination raised in the
                # task, Ctrl-C): the job runs in a session of its own and would go on writing into the staging folder
                # a retry rebuilds. The JVM is a grandchild: end the whole group we started.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()
                _until_group_gone(proc.pid)  # before its scratch is removed: a dying JVM may still write there
                _forget(record)
                if not isinstance(exc, subprocess.TimeoutExpired):
                    raise
                code = None
            else:
                _forget(record)
            log.seek(0)
            text = log.read()
        archive.exit_code = code
    tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    if code is None:
        raise SparkJobError(f"{what} ran past {timeout_s:.0f} s and was killed\n{tail}", None, tail)
    if code != 0:
        kind = "bad or missing input" if code == 2 else "failed"
        raise SparkJobError(f"{what} {kind} (exit {code}):\n{tail}", code, tail)
    return text


def _forget(record: Path | None) -> None:
    """Remove the record of a job that is over (a record left behind only makes the next try check a dead pid)."""
    if record is not None:
        with contextlib.suppress(OSError):
            record.unlink(missing_ok=True)


def _until_group_gone(pgid: int, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until no process of group ``pgid`` is left (SIGKILLed, they go within milliseconds)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _java_options_at(cmd: list[str]) -> int | None:
    """Where ``cmd`` sets ``--conf spark.driver.extraJavaOptions=...`` (None: it does not)."""
    return next((i for i, arg in enumerate(cmd)
                 if i > 0 and cmd[i - 1] == "--conf" and arg.startswith(f"{JAVA_OPTIONS}=")), None)


def with_java_option(cmd: list[str], option: str) -> list[str]:
    """``cmd`` with ``option`` added to the driver's ``spark.driver.extraJavaOptions`` (or that conf added)."""
    i = _java_options_at(cmd)
    if i is None:
        return [cmd[0], "--conf", f"{JAVA_OPTIONS}={option}", *cmd[1:]]
    return [*cmd[:i], f"{cmd[i]} {option}", *cmd[i + 1:]]


def archive_option(name: str, path: Path) -> str:
    """The JVM option ``-XX:<name>=<path>`` as it goes into ``spark.driver.extraJavaOptions``, which spark-submit
    splits on whitespace, reading quotes and backslashes as a shell does (Spark's
    ``CommandBuilderUtils.parseOptionString``): a path with a space ("/home/u/My Projects/...") is quoted, or the JVM
    got the rest of it as its main class and every job failed ("Could not find or load main class"). An ordinary path
    (letters, digits, ``@%+=:,./-_``) is left as it is."""
    return f"-XX:{name}={shlex.quote(str(path))}"


@dataclass
class ClassArchive:
    """What :func:`class_sharing` gives a job: the JVM option to add (empty: none), and the job's exit code to
    set once it has run (the archive a writing job's JVM wrote is kept only after an exit code of 0)."""

    option: str
    exit_code: int | None = None  # None: the job did not finish (timed out, or never started)

    @property
    def written(self) -> bool:
        return self.exit_code == 0


def class_archive_key(java_options: str) -> str:
    """What an archive is valid for: this Java binary, this venv's Spark and the driver's JVM options."""
    import hashlib
    from importlib.metadata import version

    real = os.path.realpath(_java())
    try:
        st = os.stat(real)
        java_id = f"{real}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        java_id = real
    text = "\n".join([java_id, version("pyspark"), sys.prefix, java_options])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _java() -> str:
    """The ``java`` spark-submit starts: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else (shutil.which("java") or "java")


def _file_crc32c(path: Path) -> str:
    import google_crc32c

    crc = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            crc.update(chunk)
    return str(crc.hexdigest().decode())


def _intact(archive: Path, record: Path) -> bool:
    """Whether ``archive`` has the size and CRC32C its writer recorded (~0.1 s for 190 MB)."""
    try:
        want = json.loads(record.read_text())
        return bool(archive.stat().st_size == want["size"] and _file_crc32c(archive) == want["crc32c"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def class_sharing(cmd: list[str], *, enabled: bool = True, folder: Path | None = None,
                  min_free_bytes: int = CLASS_ARCHIVE_MIN_FREE) -> Iterator[ClassArchive]:
    """The driver JVM's class-data-sharing archive for a spark-submit ``cmd``.

    A fresh JVM spends seconds of a month's job loading and verifying Spark's classes. The first job (for this
    Java, Spark and set of JVM options) runs with ``-XX:ArchiveClassesAtExit`` into a temporary file, renamed
    into place only when the job exited cleanly (writing it adds ~30 s to that one job), beside a record of its
    size and CRC32C; every later job checks those and maps it with ``-XX:SharedArchiveFile``. A damaged archive
    crashes the JVM that maps it (SIGBUS, ``-Xshare:auto`` or not), so one that does not match its record is
    deleted and written again. One job writes at a time (an exclusive lock file; the others run without
    the archive meanwhile), and only with ``min_free_bytes`` free. A JVM that cannot write the archive (a full
    disk) deletes it and exits 1, failing its job: after a writing job exited 1, its retry, and every job for
    ``CLASS_ARCHIVE_RETRY_S``, runs without writing (a bad input's exit 2 or a timeout is not the archive's).
    An archive the JVM cannot use (another JDK build, a changed classpath) is ignored by the JVM itself
    (``-Xshare:auto``), never an error. Archives of other keys are removed when a new one lands.
    """
    if not enabled:
        yield ClassArchive("")
        return
    at = _java_options_at(cmd)
    options = "" if at is None else cmd[at].removeprefix(f"{JAVA_OPTIONS}=")
    folder = folder or CLASS_ARCHIVES
    key = class_archive_key(options)
    archive, record = folder / f"{key}.jsa", folder / f"{key}.json"
    if archive.is_file():
        if _intact(archive, record):
            yield ClassArchive(archive_option("SharedArchiveFile", archive))
            return
        # A damaged archive crashes the JVM that maps it (SIGBUS, even under -Xshare:auto): write it again.
        for damaged in (archive, record):
            with contextlib.suppress(OSError):
                damaged.unlink()
    lock, failed = folder / f"{key}.lock", folder / f"{key}.failed"
    with contextlib.suppress(FileNotFoundError):
        if time.time() - failed.stat().st_mtime < CLASS_ARCHIVE_RETRY_S:
            yield ClassArchive("")  # the last writer failed: its retry runs without writing
            return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(folder).free < min_free_bytes:
            raise OSError(f"less than {min_free_bytes} bytes free in {folder}")
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > CLASS_ARCHIVE_LOCK_STALE_S:
                lock.unlink()
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except OSError:  # another job is writing it, the disk is short or the folder read-only: run without
        yield ClassArchive("")
        return
    for left in folder.glob(f"{key}.*.tmp"):  # what a writer killed before its cleanup left (we hold the lock)
        left.unlink(missing_ok=True)
    staged = folder / f"{key}.{os.getpid()}.tmp"
    job = ClassArchive(archive_option("ArchiveClassesAtExit", staged))
    try:
        yield job
    finally:
        pending = record.with_suffix(f".{os.getpid()}.json.tmp")
        try:
            if job.written and staged.is_file() and staged.stat().st_size > 0:
                # The record first: an archive without a matching record is never mapped.
                pending.write_text(json.dumps({"size": staged.stat().st_size, "crc32c": _file_crc32c(staged)}))
                os.replace(pending, record)
                os.replace(staged, archive)
                for old in [*folder.glob("*.jsa"), *folder.glob("*.json")]:
                    if old not in (archive, record):
                        old.unlink(missing_ok=True)
        except OSError as exc:
            # The archive is only a cache: failing to keep it (a full disk) must not turn the job's result into an
            # error, nor leave its staged archive or record behind. A later job writes it again.
            log.warning("the class-data-sharing archive %s was not kept (%s); later jobs run without it until one "
                        "keeps it", archive, exc)
            pending.unlink(missing_ok=True)
        finally:
            staged.unlink(missing_ok=True)
            if job.exit_code == 1:  # what a JVM that cannot write the archive (a full disk) exits with
                with contextlib.suppress(OSError):  # only bookkeeping of the cache, as above
                    failed.touch()
            lock.unlink(missing_ok=True)
