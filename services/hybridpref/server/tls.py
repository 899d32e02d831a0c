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

from hybridpref.server.settings import Settings
from hybridpref_client.core.errors import FieldViolation, InvalidInput


def _read(path: str | None, setting: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(FieldViolation(setting, f"cannot read {path}: {exc.strerror}")) from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials, or ``None`` for plaintext (no cert configured)."""
    if bool(settings.tls.cert_file) != bool(settings.tls.key_file):
        raise InvalidInput(
            FieldViolation(
                "HYBRIDPREF_TLS_CERT_FILE", "set both HYBRIDPREF_TLS_CERT_FILE and HYBRIDPREF_TLS_KEY_FILE, or neither"
            )
        )
    if not settings.tls.enabled:
        if settings.tls.client_ca_file:
            raise InvalidInput(
                FieldViolation("HYBRIDPREF_TLS_CLIENT_CA_FILE", "mutual TLS needs the server's own certificate and key too")
            )
        return None
    cert = _read(settings.tls.cert_file, "HYBRIDPREF_TLS_CERT_FILE")
    key = _read(settings.tls.key_file, "HYBRIDPREF_TLS_KEY_FILE")
    client_ca = _read(settings.tls.client_ca_file, "HYBRIDPREF_TLS_CLIENT_CA_FILE")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials for channels to the backends, or ``None`` for plaintext."""
    if not settings.tls.ca_file:
        if settings.tls.client_cert_file or settings.tls.client_key_file:
            raise InvalidInput(
                FieldViolation(
                    "HYBRIDPREF_TLS_CA_FILE", "a client certificate needs HYBRIDPREF_TLS_CA_FILE (TLS to the backends)"
                )
            )
        return None
    if bool(settings.tls.client_cert_file) != bool(settings.tls.client_key_file):
        raise InvalidInput(
            FieldViolation("HYBRIDPREF_TLS_CLIENT_CERT_FILE", "set both the client certificate and key, or neither")
        )
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls.ca_file, "HYBRIDPREF_TLS_CA_FILE"),
        private_key=_read(settings.tls.client_key_file, "HYBRIDPREF_TLS_CLIENT_KEY_FILE"),
        certificate_chain=_read(settings.tls.client_cert_file, "HYBRIDPREF_TLS_CLIENT_CERT_FILE"),
    )
