from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tenfold.local import process
from tenfold.local.process import LocalPlatformError


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _written_pid(path):
    """The pid a shell wrote with ``echo $! > path``: the file can exist before the number is in it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"nothing wrote a pid to {path} within 5 s")


def _written_pids(path, n, timeout=10):
    """The ``n`` pids a child wrote to ``path`` on one line: the file exists, empty, before they are in it; a read
    then found none, and every check on them held for want of any process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids = [int(pid) for pid in path.read_text().split()]
            if len(pids) == n:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"{n} pids never reached {path} within {timeout} s")


def test_port_in_use_sees_a_listener_and_a_free_port():
    with _listener() as sock:
        port = sock.getsockname()[1]
        assert process.port_in_use("127.0.0.1", port)
    port = process.free_port()
    assert not process.port_in_use("127.0.0.1", port)


def test_free_ports_are_all_different_and_free():
    # One at a time, the kernel may hand out a port twice (a few in 100,000 pairs): a test's platform then
    # starts two services on one port. Bound all at once, 200 ports are 200 different ones.
    ports = process.free_ports(200)
    assert len(set(ports)) == 200
    assert not any(process.port_in_use("127.0.0.1", p) for p in ports)


def test_start_writes_pid_file_and_stop_kills_the_whole_group(tmp_path):
    # The shell forks a grandchild, like gcloud forks the JVM: stop must take it down too.
    script = "sleep 300 & echo $! > child.pid; echo started; wait"
    record = process.start("svc", ["sh", "-c", script], run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    assert process.read_record(tmp_path / "run", "svc") == record
    child = psutil.Process(_written_pid(tmp_path / "child.pid"))
    assert process.is_running(record) and child.is_running()

    assert process.stop(record, timeout=5) is True
    assert not process.is_running(record)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert process.stop(record) is False  # already gone: nothing to do
    assert "started" in (tmp_path / "run" / "svc.log").read_text()


def test_stop_leaves_a_process_that_is_not_the_one_recorded(tmp_path):
    """A pid file whose pid now belongs to another process (pid reuse) must not kill it."""
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        real = psutil.Process(other.pid)
        stale = process.ProcessRecord(
            name="svc", pid=other.pid, create_time=process.started(real) - 3600, cmdline=["x"], port=1, log="x"
        )
        assert not process.is_running(stale)
        assert process.stop(stale, timeout=1) is False
        assert other.poll() is None
        # The same pid with the right create time is ours, and is stopped.
        ours = dataclasses.replace(stale, create_time=process.started(real))
        assert process.stop(ours, timeout=5) is True
        assert other.wait(timeout=5) is not None
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_unreadable_pid_file_identifies_nothing(tmp_path):
    (tmp_path / "svc.pid").write_text("{not json")
    assert process.read_record(tmp_path, "svc") is None
    assert process.read_record(tmp_path, "absent") is None


@pytest.mark.parametrize("pid", [0, 1, -1, "12", 1e30, True])
def test_a_pid_file_naming_no_process_tenfold_could_start_identifies_nothing(tmp_path, pid):
    record = process.ProcessRecord(name="gcs", pid=12, create_time=1.0, cmdline=["x"], port=1, log="l")
    (tmp_path / "gcs.pid").write_text(json.dumps({**dataclasses.asdict(record), "pid": pid}))
    assert process.read_record(tmp_path, "gcs") is None


_STOP_A_ZERO_PID = r"""
import dataclasses, json, os, signal, sys
from pathlib import Path
from tenfold.local import process
run = Path(sys.argv[1])
record = process.ProcessRecord(name="gcs", pid=0, create_time=1.0, cmdline=["x"], port=1, log="l")
(run / "gcs.pid").write_text(json.dumps(dataclasses.asdict(record)))
found = process.read_record(run, "gcs")
if found is not None:
    process.stop(found, timeout=2)
process._signal(0, [], signal.SIGTERM)  # and the group guard itself: 0 and its own group are the caller's group
process._signal(os.getpgrp(), [], signal.SIGTERM)
print("still alive")
"""


def test_stopping_a_pid_file_that_says_pid_0_does_not_signal_the_callers_own_group(tmp_path):
    """A pid file holding pid 0 made `tenfold down` SIGTERM its own process group (killpg(0)): the command killed
    itself, and `make down`'s shells with it. Run in a session of its own, so only it can be hit."""
    proc = subprocess.run([sys.executable, "-c", _STOP_A_ZERO_PID, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, start_new_session=True, check=False)
    assert proc.returncode == 0 and "still alive" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_wait_until_reports_a_dead_process_with_its_log(tmp_path):
    record = process.start(
        "crash", [sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"], run_dir=tmp_path, port=1
    )
    with pytest.raises(LocalPlatformError, match=r"exited before it became healthy(.|\n)*boom: bad flag"):
        process.wait_until(lambda: False, timeout=10, what="crash", record=record)


def test_a_failed_start_shows_its_own_log_and_how_it_ended_not_an_earlier_runs_crash(tmp_path):
    """The log is appended to across restarts: a start killed before it wrote a line was reported with the last lines
    of an earlier run ("FATAL: old crash from last week"), shown as its cause, and no exit status."""
    old = process.start("gcs", [sys.executable, "-c", "print('FATAL: old crash from last week'); raise SystemExit(1)"],
                        run_dir=tmp_path, port=1)
    with pytest.raises(LocalPlatformError, match=r"exited before it became healthy \(exit code 1\)"):
        process.wait_until(lambda: False, timeout=10, what="gcs", record=old)
    again = process.start("gcs", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                          run_dir=tmp_path, port=1)
    with pytest.raises(LocalPlatformError) as refused:
        process.wait_until(lambda: False, timeout=10, what="gcs", record=again)
    message = str(refused.value)
    assert "exited before it became healthy (killed by SIGKILL)" in message, message
    assert "old crash" not in message and "(nothing logged since it started)" in message, message


def test_wait_until_times_out_with_a_clear_message():
    with pytest.raises(LocalPlatformError, match="was not healthy within 0 s"):
        process.wait_until(lambda: False, timeout=0.3, what="thing", interval=0.05)


def test_start_of_a_missing_program_is_a_clear_error(tmp_path):
    with pytest.raises(LocalPlatformError, match="cannot run '/nonexistent/prog'"):
        process.start("x", ["/nonexistent/prog"], run_dir=tmp_path, port=1)


def test_a_pid_file_that_cannot_be_written_stops_the_process_it_would_have_named(tmp_path):
    # The pid file's temporary name taken by a folder: a real failed write, as a full disk would give. Nothing
    # would ever find the started process again (no pid file), so it must not outlive the refusal.
    run = tmp_path / "run"
    (run / "svc.pid.tmp").mkdir(parents=True)
    token = f"tenfold-test-{os.getpid()}-{time.monotonic_ns()}"
    argv = [sys.executable, "-c", "import time; time.sleep(300)", token]
    with pytest.raises(LocalPlatformError, match=r"svc: cannot write its pid file in .*it was stopped again"):
        process.start("svc", argv, run_dir=run, port=1)
    assert not process.pid_file(run, "svc").exists()
    left = [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if token in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert left == [], f"the service whose pid file could not be written is still running: {left}"


def _wait_until_in_its_loop(watchdog: psutil.Process, owner: psutil.Process, timeout: float = 30) -> None:
    """Until ``watchdog`` sleeps between its looks at ``owner``: it has imported psutil (mapped its extension) and
    waits in ``time.sleep`` (the kernel shows a nanosleep), which it does only in its loop, after its first look.
    A fixed wait could end while it was still importing (longer on a cold start than the wait), and a watchdog that
    wrongly killed the service on its first look passed. ``owner`` sleeps in ``time.sleep`` too: where the kernel
    shows no wait for it either ("0", as it does for a running process), the extension mapped is all there is."""
    deadline = time.monotonic() + timeout
    maps = Path(f"/proc/{watchdog.pid}/maps")
    while time.monotonic() < deadline:
        try:
            if "_psutil_linux" in maps.read_text():
                waits = Path(f"/proc/{watchdog.pid}/wchan").read_text(), Path(f"/proc/{owner.pid}/wchan").read_text()
                if "nanosleep" in waits[0] or "nanosleep" not in waits[1]:
                    return
        except (FileNotFoundError, ProcessLookupError):
            raise AssertionError("the watchdog ended while its owner lived") from None
        time.sleep(0.02)
    raise AssertionError(f"the watchdog never began to watch its owner within {timeout} s")


def test_a_tied_service_is_stopped_when_its_owner_is_killed(tmp_path):
    """Fixtures tie emulators to the test process: a killed test run leaves no emulator behind."""
    owner_code = (
        "import sys, time; from pathlib import Path; from tenfold.local import process; "
        "r = process.start('svc', ['sleep', '300'], run_dir=Path(sys.argv[1]), port=1, tie_to_this_process=True); "
        "print(r.to_json().replace(chr(10), ''), flush=True); time.sleep(300)"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        record = process.ProcessRecord.from_json(owner.stdout.readline())
        assert process.is_running(record)
        (watchdog,) = [c for c in psutil.Process(owner.pid).children() if c.pid != record.pid]
        _wait_until_in_its_loop(watchdog, psutil.Process(owner.pid))
        time.sleep(2.5)  # two more of its looks at the owner and at the service
        assert process.is_running(record)  # the watchdog leaves it alone while the owner lives
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 15
        while process.is_running(record) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process.is_running(record)
    finally:
        owner.kill()
        with contextlib.suppress(Exception):
            process.stop(process.ProcessRecord.from_json((tmp_path / "svc.pid").read_text()), timeout=2)


def test_a_killed_owner_takes_down_what_its_tied_service_started_in_a_session_of_its_own(tmp_path):
    """The watchdog killed the leader's group alone: what the service had started in a session of its own (Airflow's
    tasks, spark-submit, torchrun) ran on after a killed test run (a CI timeout). It now stops the service as
    `tenfold down` does."""
    owner_code = (
        "import sys, time; from pathlib import Path; from tenfold.local import process; "
        "r = process.start('svc', ['sh', '-c', 'setsid sleep 60 & echo $! > grandchild.pid; wait'], "
        "run_dir=Path(sys.argv[1]) / 'run', port=1, cwd=Path(sys.argv[1]), tie_to_this_process=True); "
        "print(r.to_json().replace(chr(10), ''), flush=True); time.sleep(300)"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    started: list[psutil.Process] = []
    try:
        record = process.ProcessRecord.from_json(owner.stdout.readline())
        started += psutil.Process(owner.pid).children()  # the service's leader and its watchdog
        leader = psutil.Process(record.pid)
        grandchild = psutil.Process(_written_pid(tmp_path / "grandchild.pid"))
        started.append(grandchild)
        # `$!` is written as soon as the shell forks it, before it has run setsid: wait for its session of its own.
        deadline = time.monotonic() + 10
        while os.getsid(grandchild.pid) == os.getsid(leader.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.getsid(grandchild.pid) != os.getsid(leader.pid), "setsid did not give it a session of its own"
        owner.kill()  # a real SIGKILL: no atexit, no fixture teardown
        owner.wait()

        def running(p: psutil.Process) -> bool:
            try:
                return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 15
        while any(running(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(leader), "the tied service outlived its killed owner"
        assert not running(grandchild), "what the tied service started in a session of its own outlived its owner"
        assert not any(running(p) for p in started), f"still running: {[p.cmdline() for p in started if running(p)]}"
    finally:
        owner.kill()
        owner.wait()
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_stop_also_takes_down_what_is_left_of_a_group_whose_leader_died(tmp_path):
    """Like Airflow's components after the standalone process crashed: still ours, still stopped."""
    record = process.start("svc", ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"], run_dir=tmp_path, port=1, cwd=tmp_path)
    child = psutil.Process(_written_pid(tmp_path / "child.pid"))
    psutil.Process(record.pid).kill()
    psutil.Process(record.pid).wait(timeout=5)
    assert not process.is_running(record)
    assert process.is_group_running(record)  # the orphan keeps the group alive
    assert process.stop(record, timeout=5) is True
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not process.is_group_running(record)


def test_an_orphan_that_set_its_title_is_still_ours(tmp_path):
    """Airflow's executor workers and log server call setproctitle, which writes over the memory the kernel shows
    as their environment (it reads empty): left behind by their dead leader, they are still stopped."""
    script = ("import os, sys, time\n"
              "if os.fork() == 0:\n"
              "    import setproctitle\n"
              "    setproctitle.setproctitle('airflow worker -- LocalExecutor: <idle>')\n"
              "    open('child.pid', 'w').write(str(os.getpid()))\n"
              "    time.sleep(300)\n"
              "else:\n"
              "    time.sleep(300)\n")
    record = process.start("svc", [sys.executable, "-c", script], run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    child = psutil.Process(_written_pid(tmp_path / "child.pid"))
    deadline = time.monotonic() + 5
    while child.environ() and time.monotonic() < deadline:  # the title is set just before the pid is written
        time.sleep(0.05)
    assert child.environ() == {}, "setproctitle left the environment readable: this test no longer tests that"
    psutil.Process(record.pid).kill()
    psutil.Process(record.pid).wait(timeout=5)
    assert process.is_group_running(record)
    assert process.stop(record, timeout=5) is True
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_stale_pid_file_never_adopts_a_strangers_group_that_took_the_recycled_pid(tmp_path):
    """A pid file outlives its service (a reboot, a container restart, a crash of its whole group). Its pid can
    then be recycled by a launcher that makes itself a group leader, starts a daemon and exits (``setsid``): the
    daemon's group id is the recorded pid. `up` and `down` must see nothing of ours there, and kill nothing."""
    # The launcher leads a session of its own, starts the daemon in it and exits; reaped here, its pid is free.
    launcher = subprocess.Popen(["sh", "-c", f"sleep 300 & echo $! > {tmp_path}/daemon.pid; exit 0"],
                                start_new_session=True)
    launcher.wait(timeout=5)
    daemon = psutil.Process(_written_pid(tmp_path / "daemon.pid"))
    try:
        group = os.getpgid(daemon.pid)
        assert group == launcher.pid and not psutil.pid_exists(group)
        ours = process.start("svc", ["sleep", "300"], run_dir=tmp_path / "run", port=1)
        process.stop(ours, timeout=5)
        # What `svc.pid` said when the service ran under that pid, in this boot or in an earlier one.
        stale = dataclasses.replace(ours, pid=group, create_time=ours.create_time - 1)

        def adopts_nothing(record: process.ProcessRecord) -> None:
            assert not process.is_group_running(record)
            assert process.stop(record, timeout=2) is False
            assert daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE

        adopts_nothing(stale)
        adopts_nothing(dataclasses.replace(stale, marker="", boot_id="an-earlier-boot"))
    finally:
        daemon.kill()


def test_a_clock_step_does_not_make_a_running_process_look_gone(tmp_path, monkeypatch):
    """psutil's create time on Linux is boot time + ticks, and the boot time of /proc/stat moves when the
    wall clock is stepped (NTP): identity must not depend on it, or a starting service "exits"."""
    import psutil._pslinux as pslinux

    record = process.start("svc", ["sleep", "30"], run_dir=tmp_path / "run", port=1)
    try:
        assert process.is_running(record)
        real_boot_time = pslinux.boot_time
        monkeypatch.setattr(pslinux, "boot_time", lambda: real_boot_time() + 1.0)
        assert process.is_running(record)
        assert process.is_group_running(record)
        monkeypatch.undo()
    finally:
        assert process.stop(record, timeout=5) is True


def test_stop_takes_down_descendants_that_left_the_group(tmp_path):
    """Airflow runs each task in a process group of its own, and the task starts spark-submit or torchrun in a
    session of its own: stopping the component must not leave them running, untracked, on the lake."""
    script = (
        "import os, subprocess, sys, time\n"
        "a = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # a session of its own, like spark-submit
        "b = subprocess.Popen(['sleep', '301'], process_group=0)\n"  # a group of its own, like an Airflow task
        "open('children', 'w').write(f'{a.pid} {b.pid}')\n"
        "time.sleep(300)\n"
    )
    record = process.start("svc", [sys.executable, "-c", script], run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    children = [psutil.Process(pid) for pid in _written_pids(tmp_path / "children", 2)]
    assert all(os.getpgid(c.pid) != record.pid for c in children)

    assert process.stop(record, timeout=5) is True
    left = [c.cmdline() for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"still running after stop: {left}"


def test_stop_takes_down_a_descendant_whose_parent_died_before_the_stop(tmp_path):
    """A task killed by the OOM killer while its spark-submit ran in a session of its own: the JVM, adopted by init,
    was reachable by no parent link, and `tenfold down` left it running on the lake. It carries the component's
    marker, which the stop now looks for. (An intermediate process stands for the task: it starts the `sleep` in a
    session of its own and exits.)"""
    script = (
        "import subprocess, sys, time\n"
        "task = subprocess.Popen([sys.executable, '-c', \"import subprocess; "
        "p = subprocess.Popen(['sleep', '302'], start_new_session=True); open('orphan', 'w').write(str(p.pid))\"])\n"
        "task.wait()\n"  # the task is gone; its child lives on, adopted
        "time.sleep(300)\n"
    )
    record = process.start("svc", [sys.executable, "-c", script], run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    orphan = None
    try:
        deadline = time.monotonic() + 30
        while not ((tmp_path / "orphan").exists() and (tmp_path / "orphan").read_text()):
            assert time.monotonic() < deadline, "the stand-in task never started its child"
            time.sleep(0.05)
        orphan = psutil.Process(int((tmp_path / "orphan").read_text()))
        leader = psutil.Process(record.pid)
        # The stand-in task writes the pid, then exits: until it has, the child is still its (the flake under load).
        while orphan.pid in {c.pid for c in leader.children(recursive=True)}:
            assert time.monotonic() < deadline, "still linked to the component: the stand-in task never exited"
            time.sleep(0.05)
        assert process.stop(record, timeout=5) is True
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE, "the adopted child still runs"
    finally:
        process.stop(record, timeout=5)
        if orphan is not None:
            with contextlib.suppress(psutil.Error):
                orphan.kill()


def test_log_tail_reads_the_end_of_a_large_log_whole_lines_only(tmp_path):
    """A failing service's message quotes its log's last lines; a log of hours is read from its end."""
    log = tmp_path / "svc.log"
    log.write_text("".join(f"line {i} {'x' * (i % 300)}\n" for i in range(50_000)))
    expected = log.read_text().splitlines()[-8:]
    assert process.log_tail(log, 8).splitlines() == expected
    assert process.log_tail(log, 400).splitlines()[-8:] == expected
    assert all(line.startswith("line ") for line in process.log_tail(log, 400).splitlines())
    assert process.log_tail(tmp_path / "absent.log") == "(no log)"
    long = tmp_path / "java.log"  # a JVM's traceback lines can be long
    long.write_text("".join(f"{i} {'y' * 1500}\n" for i in range(200)))
    assert process.log_tail(long, 20).splitlines() == long.read_text().splitlines()[-20:]


def test_a_relative_pythonpath_imports_in_a_child_started_in_another_folder(tmp_path, monkeypatch):
    """`PYTHONPATH=. tenfold up` with a workload of one's own (docs/workloads.md): Airflow's tasks and the replicas
    run in the platform's home, where `.` names another folder, so every one of them failed to import it."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "mywl.py").write_text("NAME = 'mine'\n")
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", "/opt/elsewhere"])}
    record = process.start("wl", [sys.executable, "-c", "import mywl; print('imported', mywl.NAME)"],
                           run_dir=tmp_path / "run", port=1, env=env, cwd=tmp_path / "home")
    psutil.Process(record.pid).wait(timeout=60)
    log = (tmp_path / "run" / "wl.log").read_text()
    assert "imported mine" in log, log
    assert process.child_environ(env)["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "project"), "/opt/elsewhere"])
    # an empty entry (PYTHONPATH=/opt/x:) is the working folder too
    assert process.child_environ({"PYTHONPATH": f"/opt/x{os.pathsep}"})["PYTHONPATH"] == \
        os.pathsep.join(["/opt/x", str(tmp_path / "project")])


def test_a_pid_file_copied_with_its_home_names_no_process_of_the_copy(tmp_path, caplog):
    """`cp -a A B` while A's platform ran: B's pid files named A's processes, so B's `status` said running and its
    `down` stopped A's platform. The copy is not B's own; A still has its process; a home moved (no copy left behind)
    keeps it, as before."""
    import logging

    home_a, home_b, home_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    record = process.start("gcs", ["sleep", "300"], run_dir=home_a / "run", port=1, cwd=tmp_path)
    try:
        subprocess.run(["cp", "-a", str(home_a), str(home_b)], check=True)
        with caplog.at_level(logging.WARNING, logger="tenfold.local.process"):
            assert process.read_record(home_b / "run", "gcs") is None
        assert str(home_a / "run") in caplog.text and str(record.pid) in caplog.text, caplog.text
        assert process.read_record(home_a / "run", "gcs") == record and process.is_running(record)
        (home_b / "run" / "gcs.pid").unlink()
        home_a.rename(home_c)  # moved, not copied: the process has no other home
        assert process.read_record(home_c / "run", "gcs") == record
    finally:
        process.stop(record, timeout=5)


def test_a_port_in_use_is_refused_naming_the_program_that_holds_it():
    with _listener() as sock:
        port = sock.getsockname()[1]
        refusal = process.port_refusal("127.0.0.1", port, "gcs", "TENFOLD_LOCAL__GCS_PORT=<port>")
    assert refusal is not None and f"pid {os.getpid()}" in refusal, refusal
    assert refusal.startswith(f"port 127.0.0.1:{port} (gcs) is already in use by another program (pid ")


def test_a_job_that_carries_the_platforms_marker_as_its_parents_is_stopped_with_the_platform(tmp_path):
    """A training launch gives torchrun a marker of its own (its folder lock's): once the task that launched it died
    first (the OOM killer) and init adopted it, `tenfold down` found it neither by a parent link nor by the marker,
    and it trained on. It now carries the platform's marker under PARENT_MARKER_ENV. A `sleep` stands for it."""
    record = process.start("svc", ["sleep", "300"], run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    job = subprocess.Popen(["sleep", "301"], start_new_session=True,
                           env={**os.environ, process.MARKER_ENV: "the-jobs-own",
                                process.PARENT_MARKER_ENV: record.marker})
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(job.pid).environ().get(process.PARENT_MARKER_ENV) != record.marker:
            assert time.monotonic() < deadline, "the job never ran with its environment"
            time.sleep(0.05)
        assert job.pid in {p.pid for p in process._marked(record.marker)}
        assert process.stop(record, timeout=5) is True
        assert job.wait(timeout=10) is not None, "the job outlived the stop of the platform's process"
    finally:
        process.stop(record, timeout=5)
        if job.poll() is None:
            job.kill()
            job.wait()


def test_storage_is_refused_when_a_stranger_holds_the_gcs_port_and_this_homes_emulator_is_not_running(tmp_path):
    """Any program on the GCS port passed the check: the model registry's calls then went to it (or, with two homes on
    the default ports, to the other home's registry). This test's own socket is the stranger."""
    from tenfold.local import local_settings

    with _listener() as sock:
        port = sock.getsockname()[1]
        settings = local_settings(tmp_path / "home", gcs_port=port)
        with pytest.raises(LocalPlatformError) as refused:
            process.require_local_storage(settings)
    said = str(refused.value)
    assert said.startswith("this home's GCS emulator is not running, and another program") and "\n" not in said, said
    assert f"pid {os.getpid()}" in said and f"127.0.0.1:{port}" in said, said


def test_another_homes_gcs_emulator_serves_storage_with_a_warning_naming_that_home(
        make_settings, local_settings, tenfold_home, caplog, monkeypatch):
    """The test session's homes share one emulator on purpose (each its own registry prefix): passed, but with the
    home it belongs to named, as two homes on the default ports would be."""
    import logging

    monkeypatch.setattr(process, "_warned_homes", set())  # warned once per process: maybe by an earlier test
    other = make_settings(on=local_settings)
    with caplog.at_level(logging.WARNING, logger="tenfold.local.process"):
        process.require_local_storage(other)
    assert f"is the platform's in {tenfold_home.resolve()}, not this home's" in caplog.text, caplog.text


def _still_running(p: psutil.Process) -> bool:
    """Whether ``p`` runs: a zombie (its parent killed, pid 1 not reaping it) counts as gone."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _bounded_runner(script: str, pids: Path, *, hup: str = "SIG_DFL") -> subprocess.Popen[bytes]:
    """A Python process that runs ``script`` (a shell command that writes its pids to ``pids``) with run_bounded, as
    `tenfold up` runs `airflow db migrate`, from a terminal: SIGTERM's disposition the default, SIGHUP's ``hup``
    (whatever the test session's own are: under nohup, SIGHUP would be ignored)."""
    code = ("import os, signal, sys\nfrom tenfold.local.process import run_bounded\n"
            "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
            f"signal.signal(signal.SIGHUP, signal.{hup})\n"
            f"done = run_bounded(['sh', '-c', {script!r}], env=os.environ, timeout=100)\n"
            "print(done.stdout, end='')\n")
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text().endswith("\n")):
        assert time.monotonic() < deadline and runner.poll() is None, "the command never started"
        time.sleep(0.05)
    return runner


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_bounded_command_and_what_it_started_die_with_a_caller_terminated_or_hung_up(tmp_path, sig):
    """`airflow db migrate` runs in a session of its own, which a closed terminal's SIGHUP never reaches, and `tenfold
    up` had no handler for SIGTERM (a CI timeout, a `kill`): killed by either, it left the migration running, in no pid
    file (`tenfold down` could not stop it), and the next `up` started a second one on the same database."""
    pids = tmp_path / "pids"
    runner = _bounded_runner(f"sleep 60 & echo $$ $! > {pids}; wait", pids)
    started = [psutil.Process(int(pid)) for pid in pids.read_text().split()]  # the command, and its child
    try:
        runner.send_signal(sig)
        # Ended as a shell says a signal ended a command (128 + its number), once its cleanup ran.
        assert runner.wait(30) == 128 + sig
        deadline = time.monotonic() + 5
        while any(_still_running(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p.pid for p in started if _still_running(p)], f"left running after {sig.name} of its caller"
    finally:
        runner.kill()
        runner.wait()
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_bounded_command_dies_with_a_caller_killed_outright(tmp_path):
    """No handler sees a SIGKILL (the OOM killer, `kill -9`): the kernel's parent-death signal ends the command."""
    pids = tmp_path / "pids"
    runner = _bounded_runner(f"echo $$ > {pids}; exec sleep 60", pids)
    command = psutil.Process(int(pids.read_text()))
    try:
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 5
        while _still_running(command) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _still_running(command), "the command outlived its killed caller"
    finally:
        with contextlib.suppress(psutil.Error):
            command.kill()


def test_a_caller_that_ignores_sighup_still_runs_its_bounded_command_to_its_end(tmp_path):
    """`nohup tenfold up`, its terminal closed: the SIGHUP it ignores is ignored during the command too."""
    pids = tmp_path / "pids"
    release = tmp_path / "release"
    runner = _bounded_runner(f"echo $$ > {pids}; while [ ! -e {release} ]; do sleep 0.05; done; echo finished", pids,
                             hup="SIG_IGN")
    try:
        runner.send_signal(signal.SIGHUP)  # an ignored signal is dropped as it is sent; one acted upon ends the
        release.touch()  # runner at once, while the command still waits for this file
        out, _ = runner.communicate(timeout=30)
        assert (runner.returncode, out) == (0, b"finished\n")
    finally:
        runner.kill()
        runner.wait()


def test_a_child_that_died_is_reaped_by_the_next_look_at_it(tmp_path):
    """A supervisor that restarts a dead child without stopping it (the inference pool's) looks at it with is_running:
    a child this process started and that exited stayed a zombie for the supervisor's life, one per crash."""
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; exit 3"  # exits once told to (after start's own checks)
    record = process.start("svc", ["sh", "-c", script], run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    proc = psutil.Process(record.pid)
    go.touch()
    deadline = time.monotonic() + 10
    while proc.status() != psutil.STATUS_ZOMBIE:  # exited, and not reaped by anything else
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.02)
    assert not process.is_running(record)
    assert not psutil.pid_exists(record.pid), "the dead child is still a zombie after is_running looked at it"
    assert process._how_it_ended(record) == " (exit code 3)"  # its exit status is kept for the refusal that says so


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv (util-linux) to run a process as another user")
def test_a_process_of_another_user_is_said_to_be_one_not_stuck_in_the_kernel(tmp_path):
    """A stop by a user who may not signal the process (a task's child started with sudo, or as its run_as_user)
    got EPERM, swallowed: the process outlived "SIGKILL" and the refusal blamed uninterruptible I/O and said a reboot
    ends it. The real refusal: a process of nobody, stopped by a child without the capability to signal other users'
    processes (root less CAP_KILL, as any user is)."""
    record = process.start("svc", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "300"],
                           run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    try:
        code = ("import json, sys\n"
                "from tenfold.local import process\n"
                "record = process.ProcessRecord.from_json(sys.stdin.read())\n"
                "try:\n"
                "    process.stop(record, timeout=30, check=True)\n"
                "except process.StillRunning as exc:\n"
                "    print(json.dumps([str(exc), exc.pids]))\n")
        started = time.monotonic()
        done = subprocess.run(["setpriv", "--bounding-set=-kill", sys.executable, "-c", code], input=record.to_json(),
                              capture_output=True, text=True, timeout=90)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        # Not waited for after a refused signal (nothing sent reaches it): the stop's 30 s for SIGTERM, then 5 s for
        # SIGKILL, were spent on it for nothing.
        assert took < 20, f"the stop waited {took:.1f} s on a process that refused its signals"
        message, pids = json.loads(done.stdout)
        assert pids == [record.pid] and process.is_running(record)
        assert message.startswith(f"svc: pid {record.pid} (user nobody) refused its stop signals: it runs as another "
                                  "user"), message
        assert f"`sudo kill {record.pid}`" in message and "stuck in the kernel" not in message
    finally:
        process.stop(record, timeout=5)


def test_a_child_with_the_pid_of_one_reaped_before_is_looked_at_itself(tmp_path):
    """Reaping a dead child frees its pid while its handle is kept: a later child given that pid (pid wrap-around)
    was matched to the old, reaped handle, so it was never reaped and its exit was said with the old one's code."""
    old = process.start("old", ["sh", "-c", f"while [ ! -e {tmp_path / 'go-old'} ]; do sleep 0.05; done; exit 3"],
                        run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    (tmp_path / "go-old").touch()
    deadline = time.monotonic() + 10
    while process.is_running(old):
        assert time.monotonic() < deadline, "the first child never exited"
        time.sleep(0.02)
    new = process.start("new", ["sh", "-c", f"while [ ! -e {tmp_path / 'go-new'} ]; do sleep 0.05; done; exit 5"],
                        run_dir=tmp_path / "run", port=1, cwd=tmp_path)
    stale = next(p for p in process._reapers if p.pid == old.pid)
    stale.pid = new.pid  # what the kernel's pid reuse would do: the old, reaped handle names the new child's pid
    (tmp_path / "go-new").touch()
    proc = psutil.Process(new.pid)
    while proc.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline + 10, "the second child never exited"
        time.sleep(0.02)
    assert not process.is_running(new)
    assert not psutil.pid_exists(new.pid), "the second child was left a zombie"
    assert process._how_it_ended(new) == " (exit code 5)"
