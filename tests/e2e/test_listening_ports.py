"""On a single-node server that serves on a loopback host, nothing listens on the network.

Issue 24, finding 9: Ray's own ports (GCS, raylet, object manager, workers, the dashboard
agent, the metrics exporter) listened on every interface while the documented ports were on
127.0.0.1. The shared quickstart server (started as `make serve` does) is read here: every
listening TCP socket of every one of its processes must be bound to a loopback address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path

import pytest

from tests.e2e.serve_cluster import ServeCluster

pytestmark = pytest.mark.e2e
LISTEN = "0A"


def cluster_pids(cluster: ServeCluster) -> set[int]:
    """Every process started for this server (they all carry its RAY_TMPDIR)."""
    marker = f"RAY_TMPDIR={cluster.workdir}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order.
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(ordered) == 4:
        return ipaddress.IPv4Address(ordered)
    address = ipaddress.IPv6Address(ordered)
    return address.ipv4_mapped or address


def listening_sockets() -> dict[str, str]:
    """Socket inode -> "address:port" of every listening TCP socket of this machine."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                hex_address, hex_port = fields[1].rsplit(":", 1)
                found[fields[9]] = f"{_address(hex_address)}:{int(hex_port, 16)}"
    return found


def test_every_port_of_a_loopback_server_listens_on_loopback_only(quickstart: ServeCluster) -> None:
    listening = listening_sockets()
    exposed, seen = [], []
    for pid in sorted(cluster_pids(quickstart)):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        for inode in socket_inodes(pid) & listening.keys():
            where = listening[inode]
            seen.append(where)
            if not ipaddress.ip_address(where.rsplit(":", 1)[0]).is_loopback:
                exposed.append(f"{name} (pid {pid}) on {where}")
    http_port = quickstart.base_url.rsplit(":", 1)[1]
    assert f"127.0.0.1:{http_port}" in seen  # the check sees the server's own listener
    assert len(seen) > 5  # and Ray's (GCS, raylet, workers, dashboard, metrics...)
    assert not exposed, "listening on the network:\n" + "\n".join(exposed)
