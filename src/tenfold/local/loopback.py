"""Requests to this machine's own services never go through a proxy.

On Linux, ``urllib``, ``requests``, ``httpx`` and gRPC send a request for ``http://127.0.0.1:...`` to the proxy
that ``http_proxy`` names unless ``no_proxy`` lists the host: a shell with a corporate proxy and no such entry
sent the Airflow admin password (the API's login), every bearer token and every health probe to the proxy, and
``tenfold up`` then waited out its health checks without naming the cause. Tenfold's own loopback clients open
their requests with :func:`urlopen`, which uses no proxy at all; :func:`not_proxied` adds the loopback hosts to
``no_proxy`` and ``NO_PROXY`` for what Tenfold does not open itself (the Google clients of the emulators, the
load generator, Airflow's components and their tasks), in this process (the ``tenfold`` command) and in the
environments it starts processes with. Its callers pass the configured ``local.bind_host`` too: any 127.x.x.x
address is valid there, and one other than 127.0.0.1 (say 127.0.0.2) matches no fixed entry, so Airflow's log
fetch with its JWT, the emulators' clients and the traffic replay's bearer token went to the proxy.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "grpc_proxy")
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen(request: str | urllib.request.Request, *, timeout: float) -> Any:
    """``urllib.request.urlopen`` with no proxy, whatever the environment says: for this machine's services."""
    return _DIRECT.open(request, timeout=timeout)


def not_proxied(env: Mapping[str, str], hosts: Iterable[str] = ()) -> dict[str, str]:
    """The ``no_proxy``/``NO_PROXY`` values that keep the loopback hosts, and ``hosts`` (the settings'
    ``local.bind_host``), off any proxy ``env`` names (each keeps what it listed); empty when ``env`` names no
    proxy, so nothing changes for everyone else.

    ``"*"`` means no proxy for anything only as a variable's whole value (urllib and requests compare the value
    with ``"*"``): such a variable is left as it is (``"*,127.0.0.1"`` would proxy everything). Within a list
    (``"*,example.com"``) the ``"*"`` matches no host, and loopback traffic went to the proxy: the loopback hosts are
    added to it."""
    if not any(env.get(name) for name in PROXY_VARIABLES):
        return {}
    everything = {name for name in NO_PROXY_VARIABLES if env.get(name) == "*"}
    if everything and not any(env.get(name) for name in NO_PROXY_VARIABLES if name not in everything):
        return {}  # whoever reads either variable sends nothing to a proxy
    listed: list[str] = []
    for name in NO_PROXY_VARIABLES:
        if name in everything:
            continue
        listed += [h.strip() for h in env.get(name, "").split(",") if h.strip() and h.strip() not in listed]
    for host in (*LOOPBACK_HOSTS, *hosts):
        if host not in listed:
            listed.append(host)
    return dict.fromkeys([name for name in NO_PROXY_VARIABLES if name not in everything], ",".join(listed))
