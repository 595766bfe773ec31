"""The driver JVM's class-data-sharing archive (tenfold.features.submit.class_sharing), with a real ``java``.

The archive is written by the first job's JVM at exit and mapped by every later one; a real JVM stands in
for spark-submit here (``java -version`` loads classes and writes the same kind of archive in a fraction of
a second), so the options the context hands out are checked by the JVM itself, not by string matching.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tenfold.features.submit import (
    CLASS_ARCHIVE_LOCK_STALE_S,
    CLASS_ARCHIVE_RETRY_S,
    JAVA_OPTIONS,
    class_archive_key,
    class_sharing,
    with_java_option,
)


@pytest.fixture(autouse=True)
def _jdk() -> None:
    """A JDK is a prerequisite `make setup` refuses to go on without (scripts/setup.sh stops without Java 17+):
    missing, the setup is broken, not a reason to skip."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("needs a JDK (Java 17+): install it (apt-get install openjdk-17-jre-headless), then `make setup`")


OPTIONS = "-XX:+UseSerialGC -Xss4m"
CMD = ["spark-submit", "--master", "local[2]", "--conf", f"{JAVA_OPTIONS}={OPTIONS}", "job.py", "--month", "2013-02"]


def java(*options: str) -> subprocess.CompletedProcess[str]:
    """``java <options> -version``, as the driver JVM would start with ``options``."""
    return subprocess.run(["java", *options, "-version"], capture_output=True, text=True, timeout=60)


def test_the_first_job_writes_the_archive_and_the_next_maps_it(tmp_path: Path) -> None:
    with class_sharing(CMD, folder=tmp_path) as first:
        assert first.option.startswith("-XX:ArchiveClassesAtExit=")
        assert java(*OPTIONS.split(), first.option).returncode == 0
        assert not list(tmp_path.glob("*.jsa")), "nothing is visible before the job has exited cleanly"
        first.exit_code = 0
    archive = tmp_path / f"{class_archive_key(OPTIONS)}.jsa"
    record = archive.with_suffix(".json")
    assert archive.is_file() and sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, record.name]), \
        "the archive and its record, no lock or temp left"

    with class_sharing(CMD, folder=tmp_path) as second:
        assert second.option == f"-XX:SharedArchiveFile={archive}"
        # -Xshare:on makes an archive the JVM cannot map a start-up error instead of a silent fallback.
        mapped = java(*OPTIONS.split(), "-Xshare:on", second.option)
        assert mapped.returncode == 0, mapped.stderr
        assert "sharing" in mapped.stderr


def test_a_job_that_failed_leaves_no_archive(tmp_path: Path) -> None:
    with class_sharing(CMD, folder=tmp_path) as job:
        assert java(*OPTIONS.split(), job.option).returncode == 0  # the JVM wrote it, but the job then failed
    assert not list(tmp_path.glob("*.jsa")) and not list(tmp_path.glob("*.tmp"))


def test_a_damaged_archive_is_never_mapped_but_written_again(tmp_path: Path) -> None:
    with class_sharing(CMD, folder=tmp_path) as job:
        assert java(*OPTIONS.split(), job.option).returncode == 0
        job.exit_code = 0
    archive = tmp_path / f"{class_archive_key(OPTIONS)}.jsa"
    archive.chmod(0o644)
    with archive.open("r+b") as f:  # a truncated copy: a JVM that maps it dies of SIGBUS
        f.truncate(archive.stat().st_size // 2)
    crashed = java(*OPTIONS.split(), f"-XX:SharedArchiveFile={archive}", "-XX:ErrorFile=/dev/null")
    assert crashed.returncode != 0, "the JVM maps a damaged archive and crashes: what the record guards against"
    with class_sharing(CMD, folder=tmp_path) as again:
        assert again.option.startswith("-XX:ArchiveClassesAtExit="), "a damaged archive is written again"
        assert not archive.exists()


def test_a_failed_writer_is_retried_without_writing_and_a_short_disk_writes_none(tmp_path: Path) -> None:
    with class_sharing(CMD, folder=tmp_path) as bad_input:
        bad_input.exit_code = 2  # a bad input: not the archive's doing, the next job writes it
    assert not list(tmp_path.iterdir())
    with class_sharing(CMD, folder=tmp_path) as job:
        assert job.option.startswith("-XX:ArchiveClassesAtExit=")
        job.exit_code = 1  # what a JVM that could not write the archive exits with
    failed = tmp_path / f"{class_archive_key(OPTIONS)}.failed"
    assert failed.is_file() and not list(tmp_path.glob("*.jsa"))
    with class_sharing(CMD, folder=tmp_path) as retry:
        assert retry.option == "", "the retry of a job whose JVM may have failed on the archive does not write it"
    old = time.time() - CLASS_ARCHIVE_RETRY_S - 60
    os.utime(failed, (old, old))
    with class_sharing(CMD, folder=tmp_path, min_free_bytes=shutil.disk_usage(tmp_path).free * 4) as short:
        assert short.option == "", "no archive is written on a disk with less free space than asked for"
    with class_sharing(CMD, folder=tmp_path) as later:
        assert later.option.startswith("-XX:ArchiveClassesAtExit=")
        later.exit_code = 0


def test_one_job_writes_at_a_time_and_a_dead_writers_lock_expires(tmp_path: Path) -> None:
    with class_sharing(CMD, folder=tmp_path) as writer:
        with class_sharing(CMD, folder=tmp_path) as other:
            assert other.option == "", "a second job runs without the archive while the first writes it"
        assert writer.option.startswith("-XX:ArchiveClassesAtExit=")
        writer.exit_code = 0  # its job succeeded (no JVM ran here, so there is no archive to put in place)
    lock = tmp_path / f"{class_archive_key(OPTIONS)}.lock"
    lock.touch()  # a writer that was SIGKILLed left its lock and its half-written archive
    left = tmp_path / f"{class_archive_key(OPTIONS)}.99999.tmp"
    left.write_bytes(b"half an archive")
    with class_sharing(CMD, folder=tmp_path) as blocked:
        assert blocked.option == ""
    old = time.time() - CLASS_ARCHIVE_LOCK_STALE_S - 60
    os.utime(lock, (old, old))
    with class_sharing(CMD, folder=tmp_path) as taken_over:
        assert taken_over.option.startswith("-XX:ArchiveClassesAtExit=")
        assert not left.exists(), "the next writer removes what the killed one left"


def test_other_options_get_their_own_archive_and_replace_the_old_one(tmp_path: Path) -> None:
    with class_sharing(CMD, folder=tmp_path) as job:
        assert java(*OPTIONS.split(), job.option).returncode == 0
        job.exit_code = 0
    quick = OPTIONS + " -XX:TieredStopAtLevel=1"
    changed = with_java_option(CMD, "-XX:TieredStopAtLevel=1")
    assert class_archive_key(quick) != class_archive_key(OPTIONS)
    with class_sharing(changed, folder=tmp_path) as job:
        assert job.option.startswith("-XX:ArchiveClassesAtExit="), "an archive of other options is not used"
        assert java(*quick.split(), job.option).returncode == 0
        job.exit_code = 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{class_archive_key(quick)}.jsa", f"{class_archive_key(quick)}.json"]


def test_the_option_joins_the_drivers_java_options() -> None:
    added = with_java_option(CMD, "-XX:SharedArchiveFile=/a.jsa")
    assert added[added.index("--conf") + 1] == f"{JAVA_OPTIONS}={OPTIONS} -XX:SharedArchiveFile=/a.jsa"
    assert added[added.index("job.py"):] == CMD[CMD.index("job.py"):]
    bare = ["spark-submit", "--master", "local[2]", "job.py"]
    assert with_java_option(bare, "-Xshare:auto") == ["spark-submit", "--conf", f"{JAVA_OPTIONS}=-Xshare:auto",
                                                      "--master", "local[2]", "job.py"]


def test_disabled_adds_nothing(tmp_path: Path) -> None:
    with class_sharing(CMD, enabled=False, folder=tmp_path) as job:
        assert job.option == ""
    assert list(tmp_path.iterdir()) == []


def spark_driver_options(cmd: list[str]) -> list[str]:
    """The JVM options the driver of spark-submit ``cmd`` starts with, as Spark itself splits
    ``spark.driver.extraJavaOptions``: its launcher (``org.apache.spark.launcher.Main``, what ``bin/spark-class`` runs
    before the driver) prints the java command it builds, NUL-separated; the options are those before the main class."""
    import pyspark

    home = Path(pyspark.__file__).parent
    # SPARK_SCALA_VERSION as pyspark's bin/load-spark-env.sh exports it for spark-submit.
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_SCALA_VERSION": "2.13"}
    printed = subprocess.run(["java", "-cp", str(home / "jars" / "*"), "org.apache.spark.launcher.Main",
                              "org.apache.spark.deploy.SparkSubmit", *cmd[1:]],
                             capture_output=True, env=env, timeout=60, check=True).stdout.decode()
    launched = [arg for arg in printed.split("\0") if arg.strip()]
    return launched[:launched.index("org.apache.spark.deploy.SparkSubmit")]


def test_an_archive_folder_with_a_space_gives_the_driver_one_option(tmp_path: Path) -> None:
    """The archive's path went into spark.driver.extraJavaOptions as it was, and Spark splits those on whitespace: a
    project under "My Projects" started the driver with "Projects/...jsa" as its main class, and every job that wrote
    the archive failed ("Could not find or load main class"). The path is quoted, so Spark hands the JVM one option."""
    import shlex

    folder = tmp_path / "My Projects" / "class archives"
    staged = folder / f"{class_archive_key(OPTIONS)}.{os.getpid()}.tmp"
    with class_sharing(CMD, folder=folder) as writer:
        cmd = with_java_option(CMD, writer.option)
        options = cmd[cmd.index("--conf") + 1].removeprefix(f"{JAVA_OPTIONS}=")
        assert shlex.split(options) == [*OPTIONS.split(), f"-XX:ArchiveClassesAtExit={staged}"], options
        driver = spark_driver_options(cmd)
        ours = driver.index(OPTIONS.split()[0])  # Spark's own options come before and after the settings' ones
        assert driver[ours:ours + 3] == [*OPTIONS.split(), f"-XX:ArchiveClassesAtExit={staged}"], driver
        written = java(*shlex.split(options))
        assert written.returncode == 0, written.stderr
        writer.exit_code = 0
    archive = folder / f"{class_archive_key(OPTIONS)}.jsa"
    assert archive.is_file(), "the JVM wrote the archive at the path with the space, and it was kept"
    with class_sharing(CMD, folder=folder) as reader:
        cmd = with_java_option(CMD, reader.option)
        options = cmd[cmd.index("--conf") + 1].removeprefix(f"{JAVA_OPTIONS}=")
        assert shlex.split(options)[-1] == f"-XX:SharedArchiveFile={archive}", options
        assert f"-XX:SharedArchiveFile={archive}" in spark_driver_options(cmd)
        mapped = java(*shlex.split(options), "-Xshare:on")
        assert mapped.returncode == 0, mapped.stderr
    ordinary = tmp_path / "archives"
    with class_sharing(CMD, folder=ordinary) as plain:  # an ordinary path is written as it always was
        assert plain.option == f"-XX:ArchiveClassesAtExit={ordinary}/{class_archive_key(OPTIONS)}.{os.getpid()}.tmp"
