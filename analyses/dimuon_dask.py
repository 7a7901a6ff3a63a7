"""Dimuon spectrum and ADL query 5, written for coffea's dask mode.

The same physics as ``analyses/dimuon.py`` (read its docstring for the
selection), written the way ``coffea.dataset_tools.apply_to_fileset`` +
``dask.compute`` needs it: the events are a dask-awkward array, histograms
come from ``hist.dask``, counts are dask-awkward scalars. ddr runs it
unchanged: each chunk becomes a small graph that the worker builds, projects
to the seven branches the selection reads, and computes on its own cores.

Outputs
-------
* ``mass``, ``mass_log``, ``met_q5``: the histograms of ``dimuon.py`` (same
  axes, unweighted ``Int64`` storage, a ``dataset`` category axis);
* ``cutflow``: ``"<dataset>/<step>"`` -> event count, steps ``all``,
  ``two_muons``, ``os_pair``, ``q5``;
* ``q5_high_met``: an awkward array, one record per query-5 event with MET
  above 100 GeV (Z -> mumu recoiling against something invisible), for an
  unbinned look: ``mass`` (the opposite-sign pair mass nearest the Z mass)
  and ``met``. It reads no branch beyond those of the histograms (event IDs
  would add three branches for every event, columnar reading cannot read
  them for the selected events only).

Running
-------
::

    pip install 'ddr-hep[dask-awkward]'
    ddr run analyses/dimuon_dask.py --datasets datasets/samples.json -o dimuon.coffea

``--mode dask`` is detected from the code (it uses ``hist.dask`` and
``dask_awkward``). With coffea alone::

    import dask
    from coffea.dataset_tools import apply_to_fileset, preprocess
    available, _ = preprocess(fileset, step_size=100_000, save_form=False)
    (out,) = dask.compute(apply_to_fileset(DimuonDaskProcessor(), available))
"""

import awkward as ak
import dask_awkward as dak
import hist
import hist.dask as hda
from coffea import processor

Z_MASS = 91.1876
HIGH_MET = 100.0


class DimuonDaskProcessor(processor.ProcessorABC):
    """Opposite-sign dimuon mass spectrum plus ADL Q5, on dask-awkward events."""

    def process(self, events):
        dataset = events.metadata["dataset"]
        dataset_axis = hist.axis.StrCategory([dataset], name="dataset", label="Dataset", growth=True)
        mass_axis = hist.axis.Regular(150, 0.0, 150.0, name="mass", label=r"$m_{\mu\mu}$ [GeV]")
        log_axis = hist.axis.Regular(
            300, 0.25, 300.0, transform=hist.axis.transform.log, name="mass", label=r"$m_{\mu\mu}$ [GeV]"
        )
        met_axis = hist.axis.Regular(100, 0.0, 200.0, name="met", label=r"$p_{T}^{miss}$ [GeV]")
        h_mass = hda.Hist(dataset_axis, mass_axis, storage=hist.storage.Int64())
        h_mass_log = hda.Hist(dataset_axis, log_axis, storage=hist.storage.Int64())
        h_met = hda.Hist(dataset_axis, met_axis, storage=hist.storage.Int64())

        muons = events.Muon
        two_muons = ak.num(muons, axis=1) >= 2
        selected = muons[two_muons]
        pairs = ak.combinations(selected, 2, fields=["first", "second"])
        pairs = pairs[pairs.first.charge != pairs.second.charge]
        mass = (pairs.first + pairs.second).mass

        flat_mass = ak.flatten(mass, axis=1)
        h_mass.fill(dataset=dataset, mass=flat_mass)
        h_mass_log.fill(dataset=dataset, mass=flat_mass)

        has_os_pair = ak.num(mass, axis=1) > 0
        in_z_window = ak.any((mass > 60.0) & (mass < 120.0), axis=1)
        met = events.MET.pt[two_muons]
        h_met.fill(dataset=dataset, met=met[in_z_window])

        nearest = ak.argmin(abs(mass - Z_MASS), axis=1, keepdims=True)
        high_met = in_z_window & (met > HIGH_MET)
        q5_high_met = dak.zip({"mass": ak.firsts(mass[nearest])[high_met], "met": met[high_met]})

        return {
            "mass": h_mass,
            "mass_log": h_mass_log,
            "met_q5": h_met,
            "cutflow": {
                f"{dataset}/all": ak.num(events, axis=0),
                f"{dataset}/two_muons": ak.sum(two_muons),
                f"{dataset}/os_pair": ak.sum(has_os_pair),
                f"{dataset}/q5": ak.sum(in_z_window),
            },
            "q5_high_met": q5_high_met,
        }

    def postprocess(self, accumulator):
        return accumulator
