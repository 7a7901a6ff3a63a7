"""The plain progress display (logs, batch jobs): periodic lines, and always the final state."""

import io

from ddr._driver import DatasetProgress
from ddr.progress import PlainProgress, format_table


def snap(done, finished=False):
    return DatasetProgress("DY", done, 40, done // 10, 0, 0, 100.0, None if finished else 3.0, finished)


def test_plain_lines_are_throttled_but_the_final_state_is_always_printed():
    out = io.StringIO()
    with PlainProgress(out, interval=3600) as bars:
        bars([snap(0)])
        bars([snap(20)])  # within the interval: not printed
        bars([snap(40, finished=True)])
    lines = out.getvalue().splitlines()
    assert lines == ["[ddr] DY: 0/40 events, 0 chunks (0 failed, 0 running), 100 Hz, eta 0:03",
                     "[ddr] DY: 40/40 events, 4 chunks (0 failed, 0 running), 100 Hz, done"]


def test_nothing_is_repeated_when_the_last_state_was_printed():
    out = io.StringIO()
    with PlainProgress(out, interval=0) as bars:
        bars([snap(40, finished=True)])
    assert out.getvalue().count("\n") == 1


def test_table_names_every_dataset():
    text = format_table([snap(20), DatasetProgress("TT", 0, None, 0, 0, 1, 0.0, None, False)], "running", 1.5)
    assert text.splitlines()[0] == "ddr run: running (1.5 s)"
    assert "DY" in text and "20/40" in text and "50.0%" in text and "TT" in text and "0/?" in text


def test_the_first_line_is_printed_on_a_freshly_booted_machine():
    # time.monotonic() counts from boot: a few seconds after boot it is small. The first state must be
    # printed however small the clock is (it was dropped when `now - 0.0 < interval`).
    out = io.StringIO()
    with PlainProgress(out, interval=3600, clock=lambda: 3.0) as bars:
        bars([snap(0)])
        bars([snap(40, finished=True)])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[ddr] DY: 0/40 events") and lines[-1].endswith("done") and len(lines) == 2
