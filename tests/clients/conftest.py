"""Fails the whole session at once, with a clear message, if run.sh's processes are not there."""

import urllib.request

import pytest

import ct


@pytest.fixture(scope="session", autouse=True)
def _proxies_are_serving():
    for name in ("bare", "envelope", "wrap"):
        with urllib.request.urlopen(f"{ct.proxy(name)}/healthz", timeout=ct.TIMEOUT) as r:
            assert r.status == 200 and r.read() == b"ok\n", f"proxy {name} is not healthy"
    for shape in ("bare", "envelope"):
        with urllib.request.urlopen(f"{ct.mock(shape)}/__mock/health", timeout=ct.TIMEOUT) as r:
            assert r.status == 200, f"mock {shape} is not healthy"
