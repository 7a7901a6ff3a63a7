"""Z -> ee: mass of opposite-sign electron pairs passing a cut-based ID.

* ``mass``: invariant mass of the leading opposite-sign pair of electrons with
  pT > 20 GeV, |eta| < 2.5 and ``cutBased >= 2`` (loose), 50-130 GeV;
* ``lead_pt`` / ``lead_eta``: the leading selected electron;
* ``cutflow``: event counts after each step.

DYto2E.root (EGamma2022 in datasets/samples.json) gives a clear Z peak.

    ddr run analyses/electrons.py --datasets datasets/samples.json -o zee.coffea
"""

import awkward as ak
import hist
from coffea import processor


class ZeeProcessor(processor.ProcessorABC):
    def process(self, events):
        dataset = events.metadata["dataset"]
        cat = hist.axis.StrCategory([], name="dataset", label="Dataset", growth=True)
        mass_h = hist.Hist(cat, hist.axis.Regular(80, 50, 130, name="mass", label=r"$m_{ee}$ [GeV]"))
        pt_h = hist.Hist(cat, hist.axis.Regular(50, 0, 150, name="pt", label=r"Leading electron $p_T$ [GeV]"))
        eta_h = hist.Hist(cat, hist.axis.Regular(50, -2.5, 2.5, name="eta", label=r"Leading electron $\eta$"))
        ele = events.Electron
        good = ele[(ele.pt > 20) & (abs(ele.eta) < 2.5) & (ele.cutBased >= 2)]
        two = ak.num(good) >= 2
        sel = good[two]
        lead, sub = sel[:, 0], sel[:, 1]
        os_pair = lead.charge != sub.charge
        mass = (lead + sub).mass[os_pair]
        mass_h.fill(dataset=dataset, mass=mass)
        pt_h.fill(dataset=dataset, pt=lead.pt[os_pair])
        eta_h.fill(dataset=dataset, eta=lead.eta[os_pair])
        return {"mass": mass_h, "lead_pt": pt_h, "lead_eta": eta_h,
                "cutflow": {f"{dataset}/all": len(events), f"{dataset}/two_electrons": int(ak.sum(two)),
                            f"{dataset}/opposite_sign": int(ak.sum(os_pair))}}

    def postprocess(self, accumulator):
        return accumulator
