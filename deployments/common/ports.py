"""Who holds a TCP port: so "address already in use" can name the process (and its pid).

Reads /proc/net/tcp{,6} for the listening socket's inode, then /proc/*/fd for its owner.
Linux only; elsewhere (or without permission) the answer is just "another process".
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LISTEN = "0A"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, command line) of a process listening on ``port``, or None when not found."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return int(proc.name), command.strip()
    return None


def describe_port_owner(port: int) -> str:
    """A phrase for error messages: 'pid 123 (python -m ...)' or 'another process'."""
    owner = port_owner(port)
    if owner is None:
        return "another process"
    pid, command = owner
    return f"pid {pid} ({command[:120]})"
