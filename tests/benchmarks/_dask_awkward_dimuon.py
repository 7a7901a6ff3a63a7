"""The dimuon/Q5 analysis with coffea + dask-awkward, run by bench_throughput.py in its own environment.

    python _dask_awkward_dimuon.py FILESET.json WORKERS

The same selection and histograms as analyses/dimuon.py, written the way coffea's dask mode needs it
(lazy histograms from ``hist.dask``, lazy counts): ``coffea.dataset_tools.preprocess`` cuts the files
into steps, ``apply_to_fileset`` builds one task graph, and a ``distributed.LocalCluster`` with WORKERS
single-threaded worker processes computes it. The clock runs from preprocessing to the computed result
(graph building included, cluster start-up excluded). Prints one JSON line: seconds, the steps, and the
mass histogram's counts.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
import warnings

warnings.filterwarnings("ignore")


from coffea import processor  # noqa: E402


class DaskDimuon(processor.ProcessorABC):
    def postprocess(self, accumulator):
        return accumulator

    def process(self, events):
        import awkward as ak
        import hist.dask as hda

        dataset = events.metadata["dataset"]
        h_mass = hda.Hist.new.StrCat([dataset], name="dataset").Reg(150, 0.0, 150.0, name="mass").Int64()
        h_log = hda.Hist.new.StrCat([dataset], name="dataset").Reg(
            300, 0.25, 300.0, transform=__import__("hist").axis.transform.log, name="mass").Int64()
        h_met = hda.Hist.new.StrCat([dataset], name="dataset").Reg(100, 0.0, 200.0, name="met").Int64()
        muons = events.Muon
        two = ak.num(muons, axis=1) >= 2
        pairs = ak.combinations(muons[two], 2, fields=["first", "second"])
        pairs = pairs[pairs.first.charge != pairs.second.charge]
        mass = (pairs.first + pairs.second).mass
        flat = ak.flatten(mass, axis=1)
        h_mass.fill(dataset=dataset, mass=flat)
        h_log.fill(dataset=dataset, mass=flat)
        in_z = ak.any((mass > 60.0) & (mass < 120.0), axis=1)
        h_met.fill(dataset=dataset, met=events.MET.pt[two][in_z])
        return {"mass": h_mass, "mass_log": h_log, "met_q5": h_met,
                "cutflow": {"all": ak.num(events, axis=0), "two_muons": ak.sum(two),
                            "os_pair": ak.sum(ak.num(mass, axis=1) > 0), "q5": ak.sum(in_z)}}


def main(fileset_path: str, workers: int) -> None:
    import dask
    from coffea.dataset_tools import apply_to_fileset, preprocess
    from coffea.nanoevents import NanoAODSchema
    from distributed import Client, LocalCluster

    spec = json.loads(pathlib.Path(fileset_path).read_text())
    base = pathlib.Path(fileset_path).parent
    fileset = {name: {"files": {str((base / f).resolve()): "Events" for f in ds["files"]}}
               for name, ds in spec.items()}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers)
        t0 = time.perf_counter()
        available, _ = preprocess(fileset, step_size=500_000, skip_bad_files=False)
        t1 = time.perf_counter()
        graph = apply_to_fileset(DaskDimuon(), available, schemaclass=NanoAODSchema)
        t2 = time.perf_counter()
        (out,) = dask.compute(graph)
        t3 = time.perf_counter()
    steps = sum(len(f["steps"]) for ds in available.values() for f in ds["files"].values())
    mass = sum(o["mass"].project("mass").values().astype("int64") for o in out.values())
    print(json.dumps({"seconds": t3 - t0, "preprocess_seconds": t1 - t0, "graph_seconds": t2 - t1,
                      "compute_seconds": t3 - t2, "steps": steps, "mass": [int(x) for x in mass]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
