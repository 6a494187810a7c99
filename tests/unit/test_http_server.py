"""The ingress's own listener: a port taken by a leftover process is reported with its pid."""

from __future__ import annotations

import os
import socket

import pytest

from deployments.common.ports import port_owner
from deployments.inference.http_server import PortInUseError, bind


def test_a_taken_port_names_the_process_holding_it() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        assert port_owner(port) == (os.getpid(), port_owner(port)[1])  # type: ignore[index]
        with pytest.raises(PortInUseError, match=rf"127\.0\.0\.1:{port}.*pid {os.getpid()}"):
            bind("127.0.0.1", port, reuse_port=False)
    finally:
        holder.close()


def test_a_free_port_is_bound_on_the_configured_host_only() -> None:
    sock = bind("127.0.0.1", 0, reuse_port=False)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
