"""The transactions log's hand-formatted lines are exactly what ``json.dumps`` writes."""

import json

import pytest

from vinecore._log import TransactionLog


def _lines(path):
    with open(path) as f:
        return [line for line in f]


def _without_time(line):
    rec = json.loads(line)
    assert isinstance(rec.pop("time"), float)
    return json.dumps(rec)


@pytest.mark.parametrize("fields", [
    dict(task=1, category="processing", worker="w-1", detail="success", attempts=1, cores=1, memory=None,
         time_max=None, measured=(0.123457, 12.5, 80.0, 0.1)),
    dict(task=22, category="default", worker=None, detail="exception", attempts=0, cores=None, memory=2000,
         time_max=3.5, measured=None),
    dict(task=3, category='odd "name"\n\u00e9', worker="sim-7", detail="worker lost", attempts=4, cores=2,
         memory=100, time_max=60.0, measured=(0, 0, 0, 0)),
    dict(task=4, category="accumulating", worker="w", detail=None, attempts=1, cores=1, memory=None,
         time_max=float("inf"), measured=(1e-07, float("nan"), 1e20, 2.0)),
])
def test_result_lines_are_what_json_dumps_writes(tmp_path, fields):
    fast, slow = tmp_path / "fast.jsonl", tmp_path / "slow.jsonl"
    log = TransactionLog(str(fast))
    log.result(**fields)
    log.close()
    log = TransactionLog(str(slow))
    m = fields["measured"]
    log.write(task=fields["task"], category=fields["category"], state="result", worker=fields["worker"],
              detail=fields["detail"], attempts=fields["attempts"],
              allocated={"cores": fields["cores"], "memory": fields["memory"], "time_max": fields["time_max"]},
              measured=None if m is None else dict(zip(("wall_time", "memory", "peak_rss", "cpu_time"), m)))
    log.close()
    (a,), (b,) = _lines(fast), _lines(slow)
    assert a.split('"time": ')[0] == b.split('"time": ')[0]
    assert _without_time(a) == _without_time(b)


def test_transition_lines_parse_with_every_field(tmp_path):
    path = tmp_path / "t.jsonl"
    log = TransactionLog(str(path))
    log.transition(7, "processing", "running", "w-1", "attempt 1")
    log.transition(8, None, "done", None, 'exception: input "x" missing')
    log.close()
    recs = [json.loads(line) for line in _lines(path)]
    assert [(r["task"], r["category"], r["state"], r["worker"], r["detail"]) for r in recs] == [
        (7, "processing", "running", "w-1", "attempt 1"), (8, None, "done", None, 'exception: input "x" missing')]


def test_a_busy_poll_flushes_only_stale_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    log = TransactionLog(str(path))
    log.transition(1, "c", "waiting", None, "")
    log.flush_if_stale()  # flushed just now (at open): not stale yet
    assert path.read_text() == ""
    log._flushed -= 10  # as if the last flush were ten seconds ago
    log.flush_if_stale()
    assert json.loads(path.read_text())["task"] == 1
    log.close()


def test_a_shared_stamp_is_the_time_of_each_line(tmp_path):
    """The manager reads the clock once for consecutive transitions: they carry that stamp, which is
    the time as "%.6f" writes it."""
    import time

    path = tmp_path / "t.jsonl"
    log = TransactionLog(str(path))
    before = time.time()
    stamp = log.stamp()
    after = time.time()
    log.transition(1, "c", "waiting", None, "", stamp)
    log.transition(1, "c", "ready", None, "", stamp)
    log.transition(1, "c", "running", "w", "attempt 1")
    log.close()
    texts = [line.split('"time": ')[1].strip().rstrip("}") for line in _lines(path)]
    assert texts[0] == texts[1] == stamp and len(stamp.split(".")[1]) == 6
    assert before - 1e-6 <= float(stamp) <= after + 1e-6 <= float(texts[2]) + 1e-6
