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
    dict(task=5, category="processing", worker="w-2", detail="success", attempts=1, cores=1, memory=None,
         time_max=None, measured=(2.0123456789, 120.5156251, -0.0, 4.9e-05)),
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
              measured=None if m is None else dict(zip(("wall_time", "memory", "peak_rss", "cpu_time"),
                                                       (round(m[0], 6), round(m[1], 3), round(m[2], 3),
                                                        round(m[3], 6)))))
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


def test_decimals_are_what_json_dumps_writes_of_the_rounded_value():
    """The fixed-point fast path against round() + json.dumps over magnitudes, signs and halfway cases."""
    import random

    from vinecore._log import _decimals

    rng = random.Random(17)
    values = [0.0, -0.0, 1e-4, -1e-4, 9.99999e-05, 5e-7, 5.000001e-7, 0.0005, 0.0015, 2.5, 1e9, -1e9,
              999999999.9999995, 123456789.123456789, float("inf"), float("-inf"), float("nan"), 0, 7, 10**12]
    for _ in range(20000):
        values.append(rng.uniform(-1, 1) * 10 ** rng.uniform(-9, 12))
        values.append(round(rng.uniform(0, 1000), rng.randint(0, 8)) + rng.choice([0, 5e-7, 5e-4, -5e-7]))
    for x in values:
        for places in (3, 6):
            assert _decimals(x, places) == json.dumps(round(x, places)), (x, places)


def test_a_result_line_takes_the_time_of_the_stamp_it_is_given(tmp_path):
    path = tmp_path / "t.jsonl"
    log = TransactionLog(str(path))
    log.result(1, "processing", "w", "success", 1, 1, None, None, None, stamp="1764540000.123400")
    log.result(2, "processing", "w", "success", 1, 1, None, None, None, stamp="1764540000.000000")
    log.close()
    assert [line.rsplit('"time": ', 1)[1] for line in _lines(path)] == ["1764540000.1234}\n", "1764540000.0}\n"]
