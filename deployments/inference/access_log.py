"""The access log: one line per request, through ``logging`` (rotation, a queue, stdout).

Lines go to ``<log_dir>/access.log`` (rotated at 20 MB, 5 files kept) and, unless turned off, to
stdout (the console of ``make serve``). A
:class:`logging.handlers.QueueHandler` hands each line to a listener thread, so the event loop
never waits on the disk. Text lines quote every field that comes from the client (path,
request id), so a crafted value cannot forge a second line or a field.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from pathlib import Path
from typing import Any

from deployments.common.environment import Environment

MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5


def format_line(record: dict[str, Any], fmt: str) -> str:
    """One access-log line: JSON, or text with client-controlled fields quoted."""
    if fmt == "json":
        return json.dumps(record, separators=(",", ":"))
    r = record
    request_line = json.dumps(f"{r['method']} {r['path']}")
    return (
        f"{r['time']} {json.dumps(r['request_id'])} {r['client']} {request_line} "
        f"{r['status']} {r['latency_ms']}ms protocol={r['protocol']} model={r['model']} "
        f"version={r['version']} batch={r['batch_size']}"
    )


class AccessLog:
    """Writes formatted records through a dedicated logger; ``fmt='off'`` writes nothing."""

    def __init__(self, fmt: str, log_dir: str, console: bool = True) -> None:
        self.fmt = fmt
        self.path: Path | None = None
        self._listener: logging.handlers.QueueListener | None = None
        self._logger = logging.getLogger(f"raytorch.access.{id(self)}")
        self._logger.propagate = False
        if fmt == "off":
            return
        directory = Path(Environment().log_dir or log_dir).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "access.log"
        to_file = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
        handlers: list[logging.Handler] = [to_file]
        if console:
            handlers.append(logging.StreamHandler(sys.stdout))
        lines: queue.SimpleQueue = queue.SimpleQueue()
        self._logger.addHandler(logging.handlers.QueueHandler(lines))
        self._logger.setLevel(logging.INFO)
        self._listener = logging.handlers.QueueListener(lines, *handlers)
        self._listener.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one line; the listener thread writes it."""
        if self._listener is not None:
            self._logger.info(format_line(record, self.fmt))

    def flush(self) -> None:
        """Write every queued line now (tests, shutdown)."""
        if self._listener is not None:
            self._listener.stop()
            self._listener.start()

    def close(self) -> None:
        """Write what is queued and close the file."""
        if self._listener is not None:
            self._listener.stop()
            for handler in self._listener.handlers:
                handler.close()
            self._listener = None
