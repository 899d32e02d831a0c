"""TLS credentials from PEM files named in ``Settings``.

Servers: ``tls_cert_file`` + ``tls_key_file`` turn TLS on for the gRPC port; a
``tls_client_ca_file`` also requires every caller to present a certificate signed by that CA
(mutual TLS, for the internal hops router -> tagger / judge / predictor).

Clients (the router's channels to the backends): ``tls_ca_file`` turns TLS on and names the CA
that signed the backends' certificates; ``tls_client_cert_file`` + ``tls_client_key_file`` are
the router's own certificate for backends that require mutual TLS. Files are read at start-up
(rotate certificates with a rolling restart).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref.server.settings import Settings


def _read(path: str | None, setting: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(FieldViolation(setting, f"cannot read {path}: {exc.strerror}")) from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials, or ``None`` for plaintext (no cert configured)."""
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise InvalidInput(FieldViolation("tls_cert_file", "set both HYBRIDPREF_TLS_CERT_FILE and HYBRIDPREF_TLS_KEY_FILE, or neither"))
    if not settings.tls_enabled:
        if settings.tls_client_ca_file:
            raise InvalidInput(FieldViolation("tls_client_ca_file", "mutual TLS needs the server's own certificate and key too"))
        return None
    cert = _read(settings.tls_cert_file, "tls_cert_file")
    key = _read(settings.tls_key_file, "tls_key_file")
    client_ca = _read(settings.tls_client_ca_file, "tls_client_ca_file")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials for channels to the backends, or ``None`` for plaintext."""
    if not settings.tls_ca_file:
        if settings.tls_client_cert_file or settings.tls_client_key_file:
            raise InvalidInput(FieldViolation("tls_ca_file", "a client certificate needs HYBRIDPREF_TLS_CA_FILE (TLS to the backends)"))
        return None
    if bool(settings.tls_client_cert_file) != bool(settings.tls_client_key_file):
        raise InvalidInput(FieldViolation("tls_client_cert_file", "set both the client certificate and key, or neither"))
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca_file, "tls_ca_file"),
        private_key=_read(settings.tls_client_key_file, "tls_client_key_file"),
        certificate_chain=_read(settings.tls_client_cert_file, "tls_client_cert_file"),
    )
