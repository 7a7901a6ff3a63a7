"""Z -> ee candidates: dielectron mass and the leading electron.

Physics
-------
A Z boson decaying to an electron-positron pair shows up as a peak at
91.2 GeV in the invariant mass of two opposite-sign electrons. This processor
selects the electrons with

* the cut-based identification at the *medium* working point or tighter
  (``Electron_cutBased >= 3``; 0 fail, 1 veto, 2 loose, 3 medium, 4 tight),
* pT > 20 GeV,
* |eta| < 2.5. A full analysis would also veto the barrel-endcap
  transition (1.4442 < |eta_SC| < 1.566) using the supercluster eta.

Events with at least two selected electrons form a Z candidate from the two
highest-pT ones. The candidate is kept if the two have opposite charge. The
``DYto2E`` sample in ``datasets/samples`` (dataset ``EGamma2023``) has exactly
two tight electrons per event, so it gives a clear peak.

Outputs
-------
* ``mass``: Z candidate mass, 100 bins from 40 to 140 GeV;
* ``lead_pt``, ``lead_eta``: pT and eta of the leading electron of candidates
  inside the Z window (70 < m < 110 GeV);
* ``cutflow``: event counts keyed ``"<dataset>/<step>"``: ``all``,
  ``two_electrons``, ``opposite_sign``, ``z_window``.

Every histogram has a growing ``dataset`` category axis, filled from
``events.metadata["dataset"]``; the category exists even when nothing passes.
Fills are unweighted, so the result does not depend on chunking or merge
order.

Running
-------
::

    ddr run analyses/electrons.py --datasets datasets/samples.json -o electrons.coffea
"""

import awkward as ak
import hist
from coffea import processor

MEDIUM_ID = 3
MIN_PT = 20.0
MAX_ABS_ETA = 2.5
Z_WINDOW = (70.0, 110.0)


class ZeeProcessor(processor.ProcessorABC):
    """Opposite-sign dielectron (Z -> ee) candidates from medium-ID electrons."""

    def process(self, events):
        dataset = events.metadata["dataset"]
        dataset_axis = hist.axis.StrCategory([dataset], name="dataset", label="Dataset", growth=True)
        h_mass = hist.Hist(
            dataset_axis,
            hist.axis.Regular(100, 40.0, 140.0, name="mass", label=r"$m_{ee}$ [GeV]"),
            storage=hist.storage.Int64(),
        )
        h_pt = hist.Hist(
            dataset_axis,
            hist.axis.Regular(100, 0.0, 200.0, name="pt", label=r"Leading electron $p_{T}$ [GeV]"),
            storage=hist.storage.Int64(),
        )
        h_eta = hist.Hist(
            dataset_axis,
            hist.axis.Regular(50, -2.5, 2.5, name="eta", label=r"Leading electron $\eta$"),
            storage=hist.storage.Int64(),
        )

        electrons = events.Electron
        good = (electrons.cutBased >= MEDIUM_ID) & (electrons.pt > MIN_PT) & (abs(electrons.eta) < MAX_ABS_ETA)
        electrons = electrons[good]
        two = ak.num(electrons, axis=1) >= 2
        electrons = electrons[two]
        # the two highest-pT electrons, whatever order the file stores them in
        electrons = electrons[ak.argsort(electrons.pt, axis=1, ascending=False)]
        lead, sublead = electrons[:, 0], electrons[:, 1]
        opposite = lead.charge != sublead.charge
        lead, sublead = lead[opposite], sublead[opposite]
        mass = (lead + sublead).mass
        h_mass.fill(dataset=dataset, mass=mass)

        in_window = (mass > Z_WINDOW[0]) & (mass < Z_WINDOW[1])
        h_pt.fill(dataset=dataset, pt=lead.pt[in_window])
        h_eta.fill(dataset=dataset, eta=lead.eta[in_window])

        return {
            "mass": h_mass,
            "lead_pt": h_pt,
            "lead_eta": h_eta,
            "cutflow": {
                f"{dataset}/all": len(events),
                f"{dataset}/two_electrons": int(ak.sum(two)),
                f"{dataset}/opposite_sign": int(ak.sum(opposite)),
                f"{dataset}/z_window": int(ak.sum(in_window)),
            },
        }

    def postprocess(self, accumulator):
        return accumulator
