"""The default transport: the ingress replica itself listens on http_options, no Serve proxy.

With the shipped configs (`proxy_location: Disabled`) a request reaches the ingress without a
proxy process and a Ray call in between; this checks, on the shared quickstart server, who owns
the listening socket, where it is bound, and that no Serve HTTP proxy runs at all.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from deployments.common.ports import port_owner
from tests.e2e.serve_cluster import ServeCluster

pytestmark = pytest.mark.e2e


def stack_commands(cluster: ServeCluster) -> list[str]:
    marker = f"RAY_TMPDIR={cluster.workdir}".encode()
    commands = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    commands.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return commands


def test_the_ingress_replica_listens_itself_on_the_configured_host(quickstart: ServeCluster) -> None:
    port = int(quickstart.base_url.rsplit(":", 1)[1])
    owner = port_owner(port)
    assert owner is not None
    assert "ServeReplica:ingress:Ingress" in owner[1]
    listening = [
        line.split()[1]
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
        if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == port
    ]
    assert listening == ["0100007F:" + format(port, "04X")]  # 127.0.0.1 only


def test_no_serve_http_proxy_runs(quickstart: ServeCluster) -> None:
    commands = stack_commands(quickstart)
    assert any("ServeController" in c for c in commands)  # the stack was found
    assert not any("ProxyActor" in c for c in commands)
