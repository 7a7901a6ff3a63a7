"""Dimuon invariant-mass spectrum and ADL benchmark query 5.

Physics
-------
Muon pairs are the cleanest resonances at a hadron collider. Every pair of
opposite-sign muons in an event gives an invariant mass
``m = sqrt((E1 + E2)^2 - |p1 + p2|^2)``. On enough data the spectrum shows the
J/psi (3.1 GeV), the Upsilon states (9.5-10.4 GeV) and the Z boson
(91.2 GeV) on a falling continuum.

Query 5 of the IRIS-HEP Analysis Description Language benchmarks asks for the
missing transverse momentum (MET) of events with an opposite-sign muon pair
whose mass lies between 60 and 120 GeV, a Z -> mumu selection. No muon
identification or isolation is required, as in the benchmark definition.

Outputs
-------
* ``mass``: every opposite-sign muon-pair mass, 150 bins from 0 to 150 GeV;
* ``mass_log``: the same pairs on a log-spaced axis from 0.25 to 300 GeV
  (the classic "dimuon spectrum" view);
* ``met_q5``: ADL Q5, MET of events with an opposite-sign pair at 60-120 GeV;
* ``cutflow``: event counts, keyed ``"<dataset>/<step>"``: ``all``,
  ``two_muons`` (at least two muons), ``os_pair`` (at least one opposite-sign
  pair) and ``q5``.

Every histogram has a growing ``dataset`` category axis, filled from
``events.metadata["dataset"]``; the category exists even when nothing passes.
Fills are unweighted, so the result does not depend on how the events were
chunked or in which order the chunks were merged.

Running
-------
::

    ddr run analyses/dimuon.py --datasets datasets/samples.json -o dimuon.coffea

With coffea alone (file paths made absolute)::

    from coffea import processor
    from coffea.nanoevents import NanoAODSchema
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema)
    out = runner(fileset, DimuonProcessor(), treename="Events")
"""

import awkward as ak
import hist
from coffea import processor


class DimuonProcessor(processor.ProcessorABC):
    """Opposite-sign dimuon mass spectrum plus ADL Q5 (MET in Z -> mumu events)."""

    def process(self, events):
        dataset = events.metadata["dataset"]
        dataset_axis = hist.axis.StrCategory([dataset], name="dataset", label="Dataset", growth=True)
        mass_axis = hist.axis.Regular(150, 0.0, 150.0, name="mass", label=r"$m_{\mu\mu}$ [GeV]")
        log_axis = hist.axis.Regular(
            300, 0.25, 300.0, transform=hist.axis.transform.log, name="mass", label=r"$m_{\mu\mu}$ [GeV]"
        )
        met_axis = hist.axis.Regular(100, 0.0, 200.0, name="met", label=r"$p_{T}^{miss}$ [GeV]")
        h_mass = hist.Hist(dataset_axis, mass_axis, storage=hist.storage.Int64())
        h_mass_log = hist.Hist(dataset_axis, log_axis, storage=hist.storage.Int64())
        h_met = hist.Hist(dataset_axis, met_axis, storage=hist.storage.Int64())

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
        h_met.fill(dataset=dataset, met=events.MET.pt[two_muons][in_z_window])

        return {
            "mass": h_mass,
            "mass_log": h_mass_log,
            "met_q5": h_met,
            "cutflow": {
                f"{dataset}/all": len(events),
                f"{dataset}/two_muons": int(ak.sum(two_muons)),
                f"{dataset}/os_pair": int(ak.sum(has_os_pair)),
                f"{dataset}/q5": int(ak.sum(in_z_window)),
            },
        }

    def postprocess(self, accumulator):
        return accumulator
