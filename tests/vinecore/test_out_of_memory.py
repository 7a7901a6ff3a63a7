"""Running out of memory is resource exhaustion, however a library reports it (vinecore.is_out_of_memory).

Under a task's memory allocation the local engine lowers the worker's address-space limit, so a thread
started by the task cannot map its stack: CPython raises ``RuntimeError: can't start new thread``, and
libraries wrap it (uproot's first read starts fsspec's I/O thread; a reader turns the failure into an
input error). The task must still end as ``resource exhaustion`` (the caller splits it), never as an
ordinary exception.
"""

import errno
import threading

import pytest

import vinecore
from vinecore import is_out_of_memory


def _thread_under_the_limit(stack_mb):
    """Start a thread whose stack cannot fit the allocation, failing as a reading library would."""
    old = threading.stack_size(stack_mb * 1024 * 1024)
    try:
        t = threading.Thread(target=lambda: None)
        try:
            t.start()
        except RuntimeError as exc:
            raise OSError("reading the file failed") from exc  # a library's wrapping
        t.join()
        return "started"
    finally:
        threading.stack_size(old)


def _raise_plain_oserror():
    raise OSError("reading the file failed")


def test_is_out_of_memory_follows_causes_and_knows_thread_start():
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as exc:
        assert is_out_of_memory(exc)
    assert is_out_of_memory(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert not is_out_of_memory(OSError(errno.EIO, "I/O error"))
    assert not is_out_of_memory(RuntimeError("can't start new thread"))  # told by where it was raised, not words
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    with pytest.raises(RuntimeError) as info:
        t.start()  # Thread.start's misuse error ("threads can only be started once") is not a resource problem
    assert not is_out_of_memory(info.value)


@pytest.mark.slow
def test_a_thread_that_cannot_start_under_the_allocation_is_exhaustion(tmp_path):
    with vinecore.Manager(engine="local", workers=1, run_dir=str(tmp_path / "run")) as m:
        capped = vinecore.PythonTask(_thread_under_the_limit, 4096)  # a 4 GiB stack under a 200 MB allocation
        capped.set_memory(200)
        plain = vinecore.PythonTask(_raise_plain_oserror)
        free = vinecore.PythonTask(_thread_under_the_limit, 1)  # no allocation: the thread starts
        for t in (capped, plain, free):
            m.submit(t)
        done = {}
        while len(done) < 3:
            t = m.wait(60)
            assert t is not None, "a task did not come back"
            done[t.id] = t
    assert capped.result == "resource exhaustion", (capped.result, capped.output)
    assert isinstance(capped.output, OSError)  # what the task raised travels back as it was
    assert plain.result == "exception" and isinstance(plain.output, OSError)
    assert free.result == "success" and free.output == "started"
    assert capped.worker == free.worker  # the worker survived the exhaustion
