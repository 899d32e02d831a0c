"""Annotator tokens: how a person signs in to the annotation page.

A vendor issues one token per annotator (``hybridpref annotate token add``); the token is shown once
and only its SHA-256 is stored (the campaign store's annotator-token table), as with the router's API
keys. A token names a vendor and an annotator: the page shows that vendor's campaign and stores labels
under that annotator's name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

from hybridpref_client.core.errors import FieldViolation, InvalidInput

TOKEN_PREFIX = "hpa_"  # recognisable in logs and secret scanners; never logged by this package
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


@dataclass(frozen=True)
class Annotator:
    vendor: str
    name: str


class AnnotatorTokenStore(Protocol):
    """What the campaign store provides for tokens (an extension of ``CampaignStore``)."""

    def add_annotator_token(self, vendor: str, annotator: str, token_sha256: str) -> None: ...
    def find_annotator_token(self, token_sha256: str) -> tuple[str, str] | None: ...   # (vendor, annotator)
    def revoke_annotator_tokens(self, vendor: str, annotator: str) -> int: ...         # tokens removed


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token (tokens are 192-bit random: a plain hash is enough, no salt or KDF)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_annotator_name(name: str, field: str = "annotator") -> str:
    """``name`` if it is a usable annotator name (1-128 of letters, digits, ``._@+-``), else InvalidInput."""
    if not _NAME.match(name):
        raise InvalidInput(FieldViolation(field, "1-128 characters: letters, digits and . _ @ + - (an e-mail works)"))
    return name


def issue_token(store: AnnotatorTokenStore, vendor: str, annotator: str) -> str:
    """A new random token for ``annotator`` of ``vendor``; only its hash is stored. Earlier tokens of the
    same annotator stay valid (revoke them explicitly)."""
    check_annotator_name(annotator)
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    store.add_annotator_token(vendor, annotator, hash_token(token))
    return token


def resolve_token(store: AnnotatorTokenStore, token: str) -> Annotator | None:
    """The annotator a presented token belongs to, or None (unknown, revoked, malformed)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        return None
    digest = hash_token(token)
    found = store.find_annotator_token(digest)
    if found is None:
        return None
    return Annotator(vendor=found[0], name=found[1])


def same_token(a: str, b: str) -> bool:
    """Constant-time comparison of two token hashes (for stores that compare in Python)."""
    return hmac.compare_digest(a, b)
