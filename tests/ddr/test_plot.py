"""`ddr plot` and `ddr.plot`: a real PNG from a real run's output, and clear errors."""

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ANALYSES, DATASETS

pytestmark = pytest.mark.slow


def ddr(*args):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    d = tmp_path_factory.mktemp("plot")
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "--quiet", "--workers", "2",
            "-o", d / "out.coffea", "--run-dir", d / "run")
    assert r.returncode == 0, r.stderr
    return d / "out.coffea"


def _image(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.mark.parametrize("extra", [[], ["--stack", "--log"], ["--dataset", "TTbar", "--hist", "mass_log"]])
def test_ddr_plot_writes_a_png(output, tmp_path, extra):
    png = tmp_path / "plot.png"
    r = ddr("plot", output, "--hist", "mass", *extra, "-o", png)
    assert r.returncode == 0, r.stderr
    img = _image(png)
    assert img.shape[0] >= 400 and img.shape[1] >= 600  # 7x5 in at 120 dpi
    assert float(np.std(img[..., :3])) > 0.01  # not blank
    assert len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 20  # lines, labels, legend


def test_ddr_plot_errors_list_what_exists(output, tmp_path):
    r = ddr("plot", output, "--hist", "nope", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and "mass, mass_log, met_q5" in r.stderr
    r = ddr("plot", output, "--hist", "mass", "--dataset", "Nope", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and "TTbar" in r.stderr and "'Nope'" in r.stderr
    r = ddr("plot", tmp_path / "missing.coffea", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and "ddr run" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_python_helper_takes_results_and_partials(output, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from coffea.util import load

    import ddr as ddr_pkg

    result = load(output)
    ax = ddr_pkg.plot(result, "met_q5")
    assert ax.get_xlabel() == "$p_{T}^{miss}$ [GeV]" and ax.get_title() == "met_q5"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(result)
    partial = {ds: (value, 0.5) for ds, value in result.items()}  # the shape handle.partial() returns
    ax = ddr_pkg.plot(partial, "mass", dataset="DYJetsToLL")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DYJetsToLL"]
    several = {"A": result, "B": result}  # {processor: {dataset: ...}} from several processors
    ax = ddr_pkg.plot(several, "B:mass", stack=True)
    ax.figure.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000
