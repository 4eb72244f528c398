"""A runtime listening on every interface registers the address routers can dial."""

from __future__ import annotations

from meshserve.settings import RuntimeSettings


def test_the_bound_address_is_registered_unless_an_advertised_host_is_set() -> None:
    assert RuntimeSettings().advertised("127.0.0.1:9001") == "127.0.0.1:9001"
    pod = RuntimeSettings(host="0.0.0.0", advertise_host="runtime-python-0.runtime-python.meshserve.svc")
    assert pod.advertised("0.0.0.0:9001") == "runtime-python-0.runtime-python.meshserve.svc:9001"
    assert pod.advertised("") == ""  # no mesh link
