"""The example notebook runs headless, from analyses/ as Jupyter would start it."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ANALYSES

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_example_notebook_executes(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ANALYSES / "example.ipynb", as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ANALYSES)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "events processed: 1280" in text and "complete: True" in text
    assert "100.0% of events" in text  # partial results were shown, the last one complete
    assert "plotted: mass_log" in text
