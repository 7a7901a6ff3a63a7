"""Jets: ADL benchmark queries Q2, Q3 and Q4.

* ``q2_jet_pt``: pT of all jets;
* ``q3_jet_pt_central``: pT of jets with |eta| < 1;
* ``q4_met``: missing transverse energy of events with at least two jets of pT > 40 GeV.

Run it with::

    ddr run analyses/jets.py --datasets datasets/samples.json -o jets.coffea
"""

import awkward as ak
import hist
from coffea import processor


def _hist(name, label, bins, lo, hi):
    return hist.Hist(hist.axis.StrCategory([], name="dataset", label="Dataset", growth=True),
                     hist.axis.Regular(bins, lo, hi, name=name, label=label))


class JetsProcessor(processor.ProcessorABC):
    def process(self, events):
        dataset = events.metadata["dataset"]
        jets = events.Jet
        q2 = _hist("pt", r"Jet $p_T$ [GeV]", 100, 15, 60)
        q2.fill(dataset=dataset, pt=ak.flatten(jets.pt))
        q3 = _hist("pt", r"Jet $p_T$ ($|\eta| < 1$) [GeV]", 100, 15, 60)
        q3.fill(dataset=dataset, pt=ak.flatten(jets.pt[abs(jets.eta) < 1]))
        has_two = ak.sum(jets.pt > 40, axis=1) >= 2
        q4 = _hist("met", r"$E_T^{miss}$ [GeV]", 100, 0, 200)
        q4.fill(dataset=dataset, met=events.MET.pt[has_two])
        return {"q2_jet_pt": q2, "q3_jet_pt_central": q3, "q4_met": q4,
                "cutflow": {f"{dataset}/all": len(events), f"{dataset}/two_jets_40": int(ak.sum(has_two))}}

    def postprocess(self, accumulator):
        return accumulator
