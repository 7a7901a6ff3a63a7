"""The local engine's forked workers (vinecore/engines/_zygote.py).

A worker forked from the zygote starts with the manager's modules, and with
nothing else of the manager's: no descriptors, no ``atexit`` functions, no
signal handlers. Exit statuses reach the engine; a dead zygote makes the
engine start workers afresh. The conformance suite runs on both start methods
(tests/vinecore/test_engines.py); these tests cover what only forking has.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import psutil
import pytest

import vinecore
from tests._helpers import wait_for
from vinecore.engines.local import LocalEngine

pytestmark = pytest.mark.slow

MARKER = "_vinecore_test_fork_marker"


@pytest.fixture
def marker_module():
    """A module only this process has: a worker that sees it was forked, not started afresh."""
    sys.modules[MARKER] = types.ModuleType(MARKER)
    yield MARKER
    del sys.modules[MARKER]


def _has_marker():
    return MARKER in sys.modules, os.getpid(), os.getppid()


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _env(name):
    return os.environ.get(name)


def _run_script(script):
    """Run ``script`` in a Python process of its own (a fresh, single-threaded manager process)."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def _run(m, fn, *args):
    m.submit(vinecore.PythonTask(fn, *args))
    t = m.wait(60)
    assert t is not None, "no task finished within 60 s"
    return t


def test_forked_workers_have_the_managers_modules_and_spawned_ones_do_not(tmp_path, marker_module):
    for method, expected in (("fork", True), ("spawn", False)):
        with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / method, start_method=method) as m:
            t = _run(m, _has_marker)
            assert t.successful, t.output
            has, pid, ppid = t.output
            assert has is expected, method
            zygote = m.engine.zygote
            if method == "fork":
                assert zygote is not None and ppid == zygote.pid and psutil.Process(zygote.pid).ppid() == os.getpid()
            else:
                assert zygote is None and ppid == os.getpid()


def test_a_killed_forked_worker_is_reported_and_replaced_by_a_forked_one(tmp_path, marker_module):
    with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "run", start_method="fork") as m:
        first = _run(m, _has_marker).output[1]
        t = _run(m, _die)
        assert t.result == "worker lost", t.result
        assert "killed by SIGKILL" in str(t.output), t.output
        has, pid, _ = _run(m, _has_marker).output
        assert has and pid != first


def test_forked_workers_hold_none_of_the_managers_descriptors_nor_run_its_atexit(tmp_path):
    flag = tmp_path / "atexit-ran"
    script = textwrap.dedent(f'''
        import atexit, os, sys, select, vinecore

        def pid():
            return os.getpid()

        atexit.register(lambda: open({str(flag)!r}, "a").write(f"{{os.getpid()}}\\n"))
        r, w = os.pipe()  # a worker that kept the write end would keep the read end from seeing EOF
        with vinecore.Manager(engine="local", workers=2, run_dir={str(tmp_path / "run")!r},
                              start_method="fork") as m:
            for i in range(4):
                m.submit(vinecore.PythonTask(pid))
            while not m.empty():
                t = m.wait(60)
                assert t is not None and t.successful, t and t.output
            os.close(w)
            assert select.select([r], [], [], 10)[0], "the pipe's read end saw no EOF: a worker holds its write end"
            assert os.read(r, 1) == b""
        print("manager", os.getpid())
    ''')
    out = _run_script(script)
    manager = int(out.stdout.split()[-1])
    # the manager's own atexit ran once, in the manager; no worker or zygote ran it
    assert flag.read_text().split() == [str(manager)]


def test_workers_get_the_engines_environment_when_forked(tmp_path):
    engine = LocalEngine(1, run_dir=str(tmp_path / "auto"), env={"VINECORE_TEST_VAR": "x"})
    assert engine.start_method == "spawn"  # auto: an environment was asked for
    with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "run", start_method="fork",
                          env={"VINECORE_TEST_VAR": "forked"}) as m:
        assert _run(m, _env, "VINECORE_TEST_VAR").output == "forked"
        assert _run(m, _env, "VINECORE_CORES").output == "1"


def test_auto_starts_workers_afresh_while_another_thread_runs(tmp_path, marker_module):
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "run") as m:
            assert m.engine.zygote is None
            assert _run(m, _has_marker).output[0] is False
    finally:
        stop.set()
        other.join()


def test_a_dead_zygote_makes_the_engine_start_workers_afresh(tmp_path, marker_module):
    with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "run", start_method="fork") as m:
        has, worker, _ = _run(m, _has_marker).output
        assert has
        zygote = m.engine.zygote.pid
        os.kill(zygote, signal.SIGKILL)
        # the worker sees its parent change and exits; the engine reports it lost and spawns a new one
        t = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            t = _run(m, _has_marker)
            if t.successful and t.output[1] != worker:
                break
        assert t is not None and t.successful and t.output[1] != worker, t and (t.result, t.output)
        assert t.output[0] is False and t.output[2] == os.getpid()  # started afresh by the manager
        assert m.engine.zygote is None
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
             10, f"the orphaned worker {worker} to exit")


def test_a_bad_start_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="start_method must be 'auto', 'fork' or 'spawn', got 'thread'"):
        LocalEngine(1, run_dir=str(tmp_path), start_method="thread")


def test_a_ddr_run_forks_its_workers_before_its_run_thread_starts(tmp_path):
    """compute() runs the manager in a thread of its own; the zygote is forked before that thread exists."""
    script = textwrap.dedent(f'''
        import sys, types
        sys.modules["{MARKER}"] = types.ModuleType("{MARKER}")
        import ddr

        def proc(item):
            return {{"forked": int("{MARKER}" in sys.modules), "n": 1}}

        job = ddr.DynamicDataReduction({{"ds": {{"n": 6}}}}, proc, preprocess=lambda s: ((i, 1) for i in range(s["n"])),
                                       workers=2, run_dir={str(tmp_path / "run")!r})
        print(job.compute())
    ''')
    out = _run_script(script)
    assert out.stdout.strip().splitlines()[-1] == "{'ds': {'forked': 6, 'n': 6}}"


def test_the_managers_uncollected_garbage_is_never_finalised_in_a_forked_worker(tmp_path):
    """A temporary directory in a reference cycle is garbage the manager has not collected yet when the
    zygote is forked; a collection in the zygote or a worker would run its finaliser and delete it."""
    script = textwrap.dedent(f'''
        import gc, os, sys, tempfile, vinecore

        def churn():
            import gc
            junk = [[i] for i in range(200_000)]
            for _ in range(3):
                gc.collect()
            return len(junk)

        gc.disable()
        holder = {{"dir": tempfile.TemporaryDirectory(dir={str(tmp_path)!r})}}
        holder["self"] = holder  # a cycle: only the collector frees it
        path = holder["dir"].name
        del holder
        with vinecore.Manager(engine="local", workers=2, run_dir={str(tmp_path / "run")!r},
                              start_method="fork") as m:
            for i in range(4):
                m.submit(vinecore.PythonTask(churn))
            while not m.empty():
                t = m.wait(60)
                assert t is not None and t.successful, t and t.output
        assert os.path.isdir(path), "a worker or the zygote finalised the manager's garbage"
        gc.collect()
        assert not os.path.exists(path), "the manager's own collection should have removed it"
        print("ok")
    ''')
    assert _run_script(script).stdout.split()[-1] == "ok"


def test_a_forked_process_names_its_temps_apart_from_its_parent():
    """Temp names are a per-process random prefix and a counter: a fork gets a prefix of its own (else a
    forked worker's first temp would be named as the manager's next one)."""
    from vinecore._files import new_temp

    mine = new_temp().cache_name
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next temp's name and leave without running any cleanup
        try:
            os.write(w, new_temp().cache_name.encode())
        finally:
            os._exit(0)
    os.close(w)
    theirs = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    ours_next = new_temp().cache_name
    prefix = mine.rsplit("-", 1)[0]
    assert ours_next.startswith(prefix + "-") and ours_next != mine
    assert theirs.startswith("temp-") and not theirs.startswith(prefix + "-"), (mine, theirs)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_manager_started_with_stdin_and_stdout_closed_keeps_its_channels_apart(tmp_path, method):
    """With descriptors 0 and 1 closed, a new socket would take them: a worker would inherit a control
    channel as its standard output, and what a library writes there (C code writes to descriptor 1, not
    to sys.stdout) would garble it; the zygote could not reopen its stdio. Sockets go above 2, and the
    zygote puts /dev/null on the closed descriptors."""
    result = tmp_path / "result.txt"
    script = textwrap.dedent(f'''
        import os, signal
        os.close(0)
        os.close(1)
        import vinecore

        def chatty(i):
            for _ in range(50):
                try:
                    os.write(1, b"what a C library prints\\n")
                except OSError:  # descriptor 1 closed, as in the manager (spawned workers)
                    pass
            return i * i, os.getpid(), os.getppid()

        with vinecore.Manager(engine="local", workers=2, run_dir={str(tmp_path / "run")!r},
                              start_method={method!r}) as m:
            def run(n):
                for i in range(n):
                    t = vinecore.PythonTask(chatty, i)
                    t.set_retries(2)  # an attempt sent to the killed worker before its death is seen
                    m.submit(t)
                return [m.wait(60) for _ in range(n)]
            done = run(6)
            os.kill(min(m.engine.worker_pids().values()), signal.SIGKILL)  # replaced by the zygote (forking)
            done += run(6)
            zygote = m.engine.zygote
            lines = [f"{{t.result}} {{t.output[0]}} {{t.output[2]}} {{t.output[1]}}" if t is not None and t.successful
                     else f"failed {{t and t.result}} {{t and t.output}}" for t in done]
            lines.append(f"zygote {{zygote.pid if zygote else None}} {{zygote.alive if zygote else None}}")
            lines.append("workers " + " ".join(map(str, sorted(m.engine.worker_pids().values()))))
        with open({str(result)!r}, "w") as f:
            f.write("\\n".join(lines))
    ''')
    _run_script(script)
    lines = result.read_text().splitlines()
    *tasks, zygote, workers = lines
    assert all(line.startswith("success") for line in tasks), [x for x in lines if not x.startswith("success")]
    assert sorted(int(line.split()[1]) for line in tasks) == sorted(2 * [0, 1, 4, 9, 16, 25]), lines
    assert len(workers.split()[1:]) == 2, lines  # the killed worker was replaced, nothing else
    if method == "fork":  # every worker, the replacement included, was forked by the live zygote
        _, pid, alive = zygote.split()
        assert alive == "True" and {line.split()[2] for line in tasks} == {pid}, lines


def test_engine_sockets_stay_off_the_standard_descriptors(tmp_path):
    """vinecore.engines._fds.socketpair: where socket.socketpair would take descriptors 0 and 1 (closed),
    its ends sit above 2, still not inheritable, and still connected."""
    result = tmp_path / "fds.txt"
    script = textwrap.dedent(f'''
        import os, socket
        os.close(0)
        os.close(1)
        from vinecore.engines._fds import socketpair

        plain = socket.socketpair()
        low = sorted(s.fileno() for s in plain)
        for s in plain:
            s.close()
        a, b = socketpair()
        a.sendall(b"ping")
        got = b.recv(4)
        with open({str(result)!r}, "w") as f:
            f.write(f"{{low}} {{a.fileno()}} {{b.fileno()}} {{a.get_inheritable()}} {{b.get_inheritable()}} {{got!r}}")
    ''')
    _run_script(script)
    low, fds = result.read_text().split("] ")
    assert low == "[0, 1"  # the test means something: a plain pair lands on the closed descriptors
    a, b, inherit_a, inherit_b, got = fds.split()
    assert int(a) > 2 and int(b) > 2 and inherit_a == inherit_b == "False" and got == "b'ping'"
