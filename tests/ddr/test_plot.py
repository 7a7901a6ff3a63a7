"""`ddr plot` and `ddr.plot`: real PNGs from a real run's output, partial results, and clear errors."""

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


@pytest.fixture(scope="module")
def result(output):
    from coffea.util import load

    return load(output)


@pytest.fixture(autouse=True)
def _agg():
    import matplotlib

    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _image(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.mark.parametrize("extra", [[], ["--stack", "--log"], ["--dataset", "TTbar", "--dataset", "DYJetsToLL"],
                                   ["--hist", "mass_log"]])
def test_ddr_plot_writes_a_png(output, tmp_path, extra):
    png = tmp_path / "plot.png"
    r = ddr("plot", output, "--hist", "mass", *extra, "-o", png)
    assert r.returncode == 0, r.stderr
    assert f"wrote {png}" in r.stderr
    img = _image(png)
    assert img.shape[:2] == (600, 840)  # 7 x 5 inches at 120 dpi
    rgb = img[..., :3]
    assert float(np.std(rgb)) > 0.01  # not blank
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # lines, labels, legend
    assert float(np.mean(rgb)) > 0.5  # a white background with drawing on it, not a black square


def test_ddr_plot_errors_list_what_exists(output, tmp_path):
    png = tmp_path / "x.png"
    r = ddr("plot", output, "--hist", "nope", "-o", png)
    assert r.returncode == 2 and "no histogram named 'nope'" in r.stderr and "mass, mass_log, met_q5" in r.stderr
    r = ddr("plot", output, "--hist", "mass", "--dataset", "Nope", "-o", png)
    assert r.returncode == 2 and "'Nope'" in r.stderr
    assert "DYJetsToLL, DoubleMuon2018, EGamma2023, TTbar" in r.stderr
    r = ddr("plot", tmp_path / "missing.coffea", "-o", png)
    assert r.returncode == 2 and "does not exist" in r.stderr and "ddr run" in r.stderr
    garbage = tmp_path / "garbage.coffea"
    garbage.write_bytes(b"this is not a coffea file")
    r = ddr("plot", garbage, "-o", png)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    r = ddr("plot", output, "-o", tmp_path / "no" / "such" / "dir" / "x.png")
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr
    assert not png.exists()


def test_python_helper_takes_results_partials_and_files(output, result, tmp_path):
    import ddr as ddr_pkg

    ax = ddr_pkg.plot(result, "met_q5")
    assert ax.get_xlabel() == "$p_{T}^{miss}$ [GeV]" and ax.get_ylabel() == "Entries" and ax.get_title() == "met_q5"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(result)
    assert ddr_pkg.plot(output, "mass_log").get_xscale() == "log"  # a .coffea path; log-spaced axis

    partial = {ds: (value, 0.5) for ds, value in result.items()}  # the shape handle.partial() returns
    ax = ddr_pkg.plot(partial, "mass", dataset="DYJetsToLL")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DYJetsToLL (50% of events)"]
    assert ax.get_title() == "mass (partial result)"
    done = {ds: (value, 1.0) for ds, value in result.items()}  # partial() after the run
    ax = ddr_pkg.plot(done, "mass", "TTbar")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["TTbar"] and ax.get_title() == "mass"

    several = {"A": result, "B": result}  # {processor: {dataset: ...}} from several processors
    ax = ddr_pkg.plot(several, "B:mass", stack=True)
    ax.figure.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000
    with pytest.raises(KeyError, match="A:mass, A:mass_log"):
        ddr_pkg.plot(several, "mass")
    several_partial = {ds: ({"A": v, "B": v}, 0.25) for ds, v in result.items()}
    ax = ddr_pkg.plot(several_partial, "A:mass", ["TTbar"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["TTbar (25% of events)"]

    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2)
    assert ddr_pkg.plot(result, "mass", ax=right) is right and right.get_title() == "mass" and not left.lines


def test_python_helper_errors(result):
    import ddr as ddr_pkg

    with pytest.raises(KeyError, match=r"no histogram named 'nope'; the result has: mass, mass_log, met_q5"):
        ddr_pkg.plot(result, "nope")
    with pytest.raises(KeyError, match=r"no dataset 'Nope' in histogram 'mass'; it has: DYJetsToLL"):
        ddr_pkg.plot(result, "mass", dataset=["TTbar", "Nope"])
    with pytest.raises(ValueError, match="no histograms yet"):
        ddr_pkg.plot({ds: (None, 0.0) for ds in result})  # a partial before the first chunk finished
    with pytest.raises(TypeError, match="handle.partial()"):
        ddr_pkg.plot([1, 2, 3])


def test_matplotlib_is_optional_and_imported_lazily(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys, ddr; ddr.plot; print(sorted("
                        "m for m in ('matplotlib', 'mplhep') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # as if matplotlib were not installed
            "import hist, ddr\n"
            "h = hist.Hist.new.Reg(4, 0, 4, name='x').Int64().fill([1, 2])\n"
            "ddr.plot({'ds': {'h': h}})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ImportError" in r.stderr and "pip install 'ddr-hep[plot]'" in r.stderr
