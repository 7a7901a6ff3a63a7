"""Jet queries 2, 3 and 4 of the ADL benchmarks.

Physics
-------
The IRIS-HEP Analysis Description Language (ADL) benchmarks are eight small
queries used to compare HEP analysis systems. Three of them are about jets:

* **Q2**: the transverse momentum of every jet in every event;
* **Q3**: the transverse momentum of the central jets, those with |eta| < 1;
* **Q4**: the missing transverse momentum (MET) of events that have at least
  two jets with pT > 40 GeV.

As in the benchmark definitions, the jets are NanoAOD's ``Jet`` collection
(anti-kT R = 0.4, with the NanoAOD pT threshold), with no identification or
overlap removal. Q2 and Q3 are per-jet fills: an event contributes once for
each of its jets.

Outputs
-------
* ``q2_jet_pt``, ``q3_jet_pt_central``: jet pT, 150 bins from 0 to 300 GeV;
* ``q4_met``: MET, 100 bins from 0 to 200 GeV;
* ``cutflow``: counts keyed ``"<dataset>/<step>"``: ``all`` (events),
  ``jets`` and ``central_jets`` (numbers of jets), ``two_jets_40`` (events
  passing Q4).

Every histogram has a growing ``dataset`` category axis, filled from
``events.metadata["dataset"]``; the category exists even when nothing passes.
Fills are unweighted, so the result does not depend on chunking or merge
order.

Running
-------
::

    ddr run analyses/jets.py --datasets datasets/samples.json -o jets.coffea
"""

import awkward as ak
import hist
from coffea import processor


class JetQueriesProcessor(processor.ProcessorABC):
    """ADL Q2 (all jet pT), Q3 (central jet pT) and Q4 (MET with two hard jets)."""

    def process(self, events):
        dataset = events.metadata["dataset"]
        dataset_axis = hist.axis.StrCategory([dataset], name="dataset", label="Dataset", growth=True)
        pt_axis = hist.axis.Regular(150, 0.0, 300.0, name="pt", label=r"Jet $p_{T}$ [GeV]")
        met_axis = hist.axis.Regular(100, 0.0, 200.0, name="met", label=r"$p_{T}^{miss}$ [GeV]")
        h_pt = hist.Hist(dataset_axis, pt_axis, storage=hist.storage.Int64())
        h_pt_central = hist.Hist(dataset_axis, pt_axis, storage=hist.storage.Int64())
        h_met = hist.Hist(dataset_axis, met_axis, storage=hist.storage.Int64())

        jets = events.Jet

        # Q2: every jet
        all_pt = ak.flatten(jets.pt, axis=1)
        h_pt.fill(dataset=dataset, pt=all_pt)

        # Q3: central jets
        central_pt = ak.flatten(jets.pt[abs(jets.eta) < 1.0], axis=1)
        h_pt_central.fill(dataset=dataset, pt=central_pt)

        # Q4: at least two jets above 40 GeV
        two_hard_jets = ak.sum(jets.pt > 40.0, axis=1) >= 2
        h_met.fill(dataset=dataset, met=events.MET.pt[two_hard_jets])

        return {
            "q2_jet_pt": h_pt,
            "q3_jet_pt_central": h_pt_central,
            "q4_met": h_met,
            "cutflow": {
                f"{dataset}/all": len(events),
                f"{dataset}/jets": len(all_pt),
                f"{dataset}/central_jets": len(central_pt),
                f"{dataset}/two_jets_40": int(ak.sum(two_hard_jets)),
            },
        }

    def postprocess(self, accumulator):
        return accumulator
