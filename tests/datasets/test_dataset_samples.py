"""The shipped real samples: checksums, licences and the facts PROVENANCE.md states."""

import hashlib
import warnings

import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from tests.conftest import DATASETS, SAMPLES

# file -> (tree, entries, branches, uuid): the table in datasets/PROVENANCE.md
FACTS = {
    "DYto2E.root": ("Events", 1000, 2116, "462c74b2-2807-11ef-8b5b-f64dfa2c5e3c"),
    "nano_dimuon.root": ("Events", 40, 1601, "a210a3f8-3648-11ea-a29f-f5b55c90beef"),
    "nano_dy.root": ("Events", 40, 1499, "a9490124-3648-11ea-89e9-f5b55c90beef"),
    "nano_dy_empty.root": ("Events", 0, 1499, "f73b274c-da3c-11f0-b00b-2100a8c0beef"),
    "nano_tt_v12.root": ("Events", 200, 654, "1825cd4a-2943-11f1-9dd5-001a4abb4031"),
    "missing_luminosityBlock.root": ("Events", 2, 1582, "58e4d45e-6cf1-11ee-8cb5-e911650abeef"),
    "PHYSLITE_example.root": ("CollectionTree", 100, 1494, "6a4128c4-506c-11ef-a90f-bfcc19acbeef"),
}


def read_sums():
    sums = {}
    for line in (SAMPLES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_sha256sums_lists_exactly_the_root_files():
    assert set(read_sums()) == {p.name for p in SAMPLES.glob("*.root")} == set(FACTS)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_sha256_matches(name):
    digest = hashlib.sha256((SAMPLES / name).read_bytes()).hexdigest()
    assert digest == read_sums()[name]


def test_licences_and_provenance_are_shipped():
    coffea = (DATASETS / "licenses" / "coffea-LICENSE").read_text()
    egamma = (DATASETS / "licenses" / "egamma-tnp-LICENSE").read_text()
    assert "BSD 3-Clause" in coffea and "Copyright (c) 2018, Fermilab" in coffea
    assert "BSD 3-Clause" in egamma and "Copyright (c) 2023, Iason Krommydas" in egamma
    provenance = (DATASETS / "PROVENANCE.md").read_text()
    for name, digest in read_sums().items():
        assert name in provenance and digest in provenance


@pytest.mark.parametrize("name", sorted(FACTS))
def test_tree_entries_branches_uuid(name):
    tree, entries, branches, uuid = FACTS[name]
    with uproot.open(SAMPLES / name) as f:
        assert str(f.file.uuid) == uuid
        t = f[tree]
        assert t.num_entries == entries
        assert len(t.keys()) == branches


def test_missing_luminosity_block_is_rejected_by_nanoaod_schema():
    with pytest.raises(RuntimeError, match="luminosityBlock"):
        NanoEventsFactory.from_root({str(SAMPLES / "missing_luminosityBlock.root"): "Events"},
                                    schemaclass=NanoAODSchema, mode="virtual").events()


def test_empty_file_opens_with_zero_events():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = NanoEventsFactory.from_root({str(SAMPLES / "nano_dy_empty.root"): "Events"},
                                             schemaclass=NanoAODSchema, mode="virtual").events()
    assert len(events) == 0


def test_dyto2e_is_a_two_electron_data_skim():
    with uproot.open(SAMPLES / "DYto2E.root") as f:
        t = f["Events"]
        assert "genWeight" not in t and "GenPart_pt" not in t.keys()
        n = t["nElectron"].array(library="np")
        runs = set(t["run"].array(library="np").tolist())
    assert (n == 2).all()
    assert runs == {367475}  # a 2023 run (2022 ends at 362760)
