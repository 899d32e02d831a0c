"""Shared fixtures: real gRPC servers on ephemeral loopback ports.

Services run in a background event loop (``BackgroundLoop``) so tests can use the
blocking client, exactly like a vendor would.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def background_loop():
    from hybridpref.cli.stack import BackgroundLoop

    loop = BackgroundLoop()
    yield loop
    loop.close()


class LogCapture(io.StringIO):
    """structlog JSON lines written during the tests, parsed on demand."""

    def records(self) -> list[dict]:
        out = []
        for line in self.getvalue().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


@pytest.fixture(scope="session")
def log_capture():
    from hybridpref.server.logs import configure_logging

    stream = LogCapture()
    configure_logging("tests", "DEBUG", "json", stream=stream)
    return stream
