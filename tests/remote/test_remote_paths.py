"""Urls and CMS logical file names in every fileset dialect: kept as given, never resolved as paths;
redirector candidates; remote options. Pure functions: no servers."""

import json

import pytest

from ddr import RemoteOptions
from ddr._datasets import fileset_to_json, load_fileset, write_fileset
from ddr._remote import candidates, is_lfn

ROOT = "root://eos.example.org:1094//eos/cms/store/data/a.root"
HTTPS = "https://webdav.example.org/nanoaod/b.root"
LFN = "/store/mc/Run3/DY/NANOAODSIM/c.root"


@pytest.mark.parametrize("dialect", ["list", "raw", "preprocessed"])
def test_urls_and_lfns_are_kept_in_every_dialect(tmp_path, dialect):
    paths = [ROOT, HTTPS, LFN, "local/d.root"]
    if dialect == "list":
        spec = {"ds": paths}
    elif dialect == "raw":
        spec = {"ds": {"files": {p: "Events" for p in paths}}}
    else:
        spec = {"ds": {"files": {p: {"object_path": "Events", "steps": [[0, 5]], "num_entries": 5, "uuid": "u"}
                                 for p in paths}}}
    source = tmp_path / "sub" / "fileset.json"
    source.parent.mkdir()
    source.write_text(json.dumps(spec))
    got = [f.path for f in load_fileset(source)["ds"].files]
    assert got == [ROOT, HTTPS, LFN, str(tmp_path / "sub" / "local" / "d.root")]  # only the local one resolves
    out = tmp_path / "elsewhere" / "out.json"
    out.parent.mkdir()
    write_fileset(load_fileset(source), out)
    written = list(json.loads(out.read_text())["ds"]["files"])
    assert written[:3] == [ROOT, HTTPS, LFN] and written[3] == "../sub/local/d.root"
    assert list(fileset_to_json(load_fileset(source))["ds"]["files"])[:3] == [ROOT, HTTPS, LFN]


def test_redirector_candidates():
    reds = ("root://regional.example.org/", "root://global.example.org:1094")
    opts = RemoteOptions(redirectors=reds)
    assert opts.redirectors == ("root://regional.example.org", "root://global.example.org:1094")
    assert candidates(LFN, opts.redirectors) == [f"root://regional.example.org/{LFN}",
                                                 f"root://global.example.org:1094/{LFN}"]
    assert candidates(ROOT, opts.redirectors) == [ROOT]  # a url is read as given
    assert candidates(LFN, ()) == [LFN]  # without redirectors, /store/... is a local path
    assert is_lfn(LFN) and not is_lfn("/data/store/x.root")


def test_remote_options_are_checked():
    with pytest.raises(ValueError, match="redirector 'cms-xrd-global.cern.ch' is not a root://"):
        RemoteOptions(redirectors=("cms-xrd-global.cern.ch",))
    with pytest.raises(ValueError, match="cache must be one of auto, always, never"):
        RemoteOptions(cache="sometimes")
    with pytest.raises(ValueError, match="cannot read '20 parsecs' as a size"):
        RemoteOptions(cache_size="20 parsecs")
    assert RemoteOptions(cache_size="1.5GiB").cache_size == int(1.5 * 2**30)
    assert RemoteOptions.coerce({"cache": "never", "redirectors": ["root://a"]}) == RemoteOptions(("root://a",),
                                                                                                 cache="never")
    t = RemoteOptions(read_timeout=7)
    assert t.uproot_options("root://h//f.root") == {"timeout": 7, "skip_instance_cache": True}
    assert t.uproot_options("/local.root") == {}


def test_xrootd_settings_follow_the_read_timeout(monkeypatch):
    import vinecore

    for name in ("XRD_CONNECTIONRETRY", "XRD_CONNECTIONWINDOW", "XRD_REQUESTTIMEOUT", "XRD_STREAMERRORWINDOW"):
        monkeypatch.delenv(name, raising=False)
    got = vinecore.apply_xrootd_settings(30)
    assert got["ConnectionRetry"] == 2 and got["ConnectionWindow"] == 5 and got["RequestTimeout"] == 30
    assert got["StreamErrorWindow"] == 5  # a restarted server is used again within seconds
    from XRootD import client

    assert client.EnvGetInt("RequestTimeout") == 30
    got = vinecore.apply_xrootd_settings(12)  # a later run with another timeout changes them
    assert got["RequestTimeout"] == 12 and client.EnvGetInt("RequestTimeout") == 12
    monkeypatch.setenv("XRD_CONNECTIONRETRY", "9")  # the user's own setting wins
    assert vinecore.apply_xrootd_settings(12)["ConnectionRetry"] == 9
