"""Serve's per-replica gRPC server stays on 127.0.0.1 when Ray is loopback-only (issue 24,
finding 9). The e2e check (tests/e2e/test_listening_ports.py) lists a real server's sockets."""

from __future__ import annotations

import inspect

import pytest
from ray.serve._private import replica

from deployments.common.serve_loopback import LOOPBACK_ONLY_ENV, keep_replica_servers_on_loopback


def test_ray_still_binds_the_replicas_grpc_server_where_the_adapter_expects() -> None:
    """Fails loudly when a Ray upgrade changes what the adapter rewrites."""
    source = inspect.getsource(replica)
    assert 'add_port_to_grpc_server(self._server, "[::]:0")' in source
    assert callable(replica.add_port_to_grpc_server)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    addresses: list[str] = []

    def record(server: object, address: str) -> int:
        addresses.append(address)
        return 1234

    monkeypatch.setattr(replica, "add_port_to_grpc_server", record)
    return addresses


def test_a_loopback_only_ray_gets_the_replica_server_on_loopback(
    recorded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in LOOPBACK_ONLY_ENV.items():
        monkeypatch.setenv(key, value)
    assert keep_replica_servers_on_loopback()
    assert keep_replica_servers_on_loopback()  # idempotent: wrapped once
    assert replica.add_port_to_grpc_server(object(), "[::]:0") == 1234
    assert replica.add_port_to_grpc_server(object(), "10.0.0.1:5") == 1234
    assert recorded == ["127.0.0.1:0", "10.0.0.1:5"]


def test_elsewhere_the_address_is_left_alone(recorded: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in LOOPBACK_ONLY_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not keep_replica_servers_on_loopback()
    replica.add_port_to_grpc_server(object(), "[::]:0")
    assert recorded == ["[::]:0"]
