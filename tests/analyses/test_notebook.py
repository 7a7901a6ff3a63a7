"""The example notebook executes headless, started in analyses/ as Jupyter would start it.

The kernel is this test's interpreter (sys.executable): a kernelspec naming it is written to a temporary
folder put first on JUPYTER_PATH, so a python3 kernel installed elsewhere on the machine is never used.
"""

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ANALYSES

pytestmark = pytest.mark.slow

KERNEL = "ddr-test-python"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ddr tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter: figures as PNG
    return KERNEL


def _text(output):
    if output.output_type == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


@pytest.mark.timeout(300)
def test_example_notebook_executes(kernel):
    nb = nbformat.read(ANALYSES / "example.ipynb", as_version=4)
    NotebookClient(nb, timeout=240, kernel_name=kernel, resources={"metadata": {"path": str(ANALYSES)}}).execute()
    assert nb.metadata.kernelspec.name == "python3"  # what the notebook asks for when opened in Jupyter
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join("\n".join(e.traceback) for e in errors)
    text = "".join(_text(o) for o in outputs)
    assert "samples: datasets/samples.json" in text  # the repository root was found from analyses/
    assert "events processed: 1280" in text and "complete: True" in text
    assert "100.0% of events" in text  # partial results were printed, the last one complete
    assert "ddr run: finished" in text  # the final progress table (the handle as the cell's value)
    assert "plotted: mass_log" in text
    assert "muon pairs: 104 without the cut, 29 with muons above 10 GeV" in text
    assert "second run (warm workers): first partial result" in text
    assert "status: " in text
    html = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("<table>" in o.data["text/html"] and "TTbar" in o.data["text/html"] for o in html)  # show()
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the partial plot, the final one, the stacked one
