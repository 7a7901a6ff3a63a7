"""Dimuon mass spectrum and ADL benchmark Q5.

* ``mass``: invariant mass of every opposite-sign muon pair (0-150 GeV);
* ``met_q5``: ADL Q5, the missing transverse energy of events that have an
  opposite-sign muon pair with 60 < m < 120 GeV;
* ``cutflow``: event counts after each selection step.

Run it with::

    ddr run analyses/dimuon.py --datasets datasets/samples.json -o dimuon.coffea
"""

import awkward as ak
import hist
from coffea import processor


class DimuonProcessor(processor.ProcessorABC):
    def process(self, events):
        dataset = events.metadata["dataset"]
        mass_h = hist.Hist(hist.axis.StrCategory([], name="dataset", label="Dataset", growth=True),
                           hist.axis.Regular(150, 0, 150, name="mass", label=r"$m_{\mu\mu}$ [GeV]"))
        met_h = hist.Hist(hist.axis.StrCategory([], name="dataset", label="Dataset", growth=True),
                          hist.axis.Regular(100, 0, 200, name="met", label=r"$E_T^{miss}$ [GeV]"))
        muons = events.Muon
        two = ak.num(muons) >= 2
        pairs = ak.combinations(muons[two], 2, fields=["m1", "m2"])
        os_pairs = pairs[pairs.m1.charge != pairs.m2.charge]
        mass = (os_pairs.m1 + os_pairs.m2).mass
        mass_h.fill(dataset=dataset, mass=ak.flatten(mass))
        in_window = ak.any((mass > 60) & (mass < 120), axis=1)
        met_h.fill(dataset=dataset, met=events.MET.pt[two][in_window])
        return {
            "mass": mass_h,
            "met_q5": met_h,
            "cutflow": {
                f"{dataset}/all": len(events),
                f"{dataset}/two_muons": int(ak.sum(two)),
                f"{dataset}/q5": int(ak.sum(in_window)),
            },
        }

    def postprocess(self, accumulator):
        return accumulator
