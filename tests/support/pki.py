"""Throwaway certificates for TLS tests: one CA, a server certificate for loopback, one client certificate."""

from __future__ import annotations

from pathlib import Path

import trustme


def write_pki(folder: Path, client_name: str) -> dict[str, Path]:
    """Write ca.pem, server.pem/.key (127.0.0.1, localhost) and client.pem/.key (``client_name``) into ``folder``."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(client_name)
    files: dict[str, Path] = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem.bytes()),
        ("server.key", server.private_key_pem.bytes()),
        ("server.pem", b"".join(c.bytes() for c in server.cert_chain_pems)),
        ("client.key", client.private_key_pem.bytes()),
        ("client.pem", b"".join(c.bytes() for c in client.cert_chain_pems)),
    ):
        (folder / name).write_bytes(blob)
        files[name] = folder / name
    return files
