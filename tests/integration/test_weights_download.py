"""Opt-in: the real AlexNet downloads (233 MiB each), checked for size, hash and a strict load. Skipped unless
CLASSICNETS_NETWORK_TESTS=1 is set and the publisher's server answers; no default test touches the internet."""

from __future__ import annotations

import os
import urllib.request

import pytest

from classicnets.weights import get_weights, load_weights
from classicnets.weights.hub import sha256_of
from classicnets.weights.known import KNOWN_WEIGHTS

MIB = 2**20


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    os.environ.get("CLASSICNETS_NETWORK_TESTS") != "1", reason="downloads 233 MiB; set CLASSICNETS_NETWORK_TESTS=1"
)
@pytest.mark.parametrize("name", ["alexnet.imagenet", "alexnet2012.imagenet"])
def test_real_alexnet_weights_download_check_and_load_strictly(name, tmp_path, monkeypatch):
    known = KNOWN_WEIGHTS[name]
    if not reachable(known.url):
        pytest.skip(f"{known.url} cannot be reached from here")
    monkeypatch.setenv("CLASSICNETS_HOME", str(tmp_path))
    got = get_weights(name)
    size, digest = got.path.stat().st_size, sha256_of(got.path)
    print(f"{name}: {size:,} bytes, SHA-256 {digest}")  # for docs/facts.md when a publisher gives no hash
    if known.size_bytes is not None:
        assert size == known.size_bytes
    else:  # torchvision's `_file_size` is the size in MiB rounded to 3 decimals
        assert abs(size / MIB - known.size_mib) <= 0.0005
    if known.sha256 is not None:
        assert digest.startswith(known.sha256)
    model = load_weights(name, progress=False)  # from the cache, through the safe loaders, every shape checked
    assert sum(p.numel() for p in model.parameters()) == known.num_params
    assert model.classes is not None and model.classes[0] == "tench, Tinca tinca"
    assert model.preprocessing == known.preprocessing
