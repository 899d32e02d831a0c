"""Annotator tokens: how a person signs in to the annotation page.

A vendor issues one token per annotator (``hybridpref annotate token add``); the campaign store makes
the random token, keeps only its SHA-256 (table ``annotator_tokens``) and returns it once, as with the
router's API keys. A token names a vendor and an annotator: the page shows that vendor's campaign and
stores labels under that annotator's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

MAX_TOKEN_CHARS = 256  # longer input is not a token: refused before hashing or a query


@dataclass(frozen=True)
class Annotator:
    vendor: str
    name: str


class AnnotatorTokenStore(Protocol):
    """The campaign store's token methods (``SqlCampaignStore``)."""

    def create_annotator_token(self, vendor: str, annotator: str) -> str: ...
    def annotator_for_token(self, token: str) -> tuple[str, str] | None: ...   # (vendor, annotator)
    def revoke_annotator_tokens(self, vendor: str, annotator: str) -> int: ...


def issue_token(store: AnnotatorTokenStore, vendor: str, annotator: str) -> str:
    """A new token for ``annotator`` of ``vendor`` (shown once; earlier tokens stay valid until revoked).
    Bad names raise ``InvalidInput`` naming the field."""
    return store.create_annotator_token(vendor, annotator)


def resolve_token(store: AnnotatorTokenStore, token: str) -> Annotator | None:
    """The annotator a presented token belongs to, or None (empty, too long, unknown or revoked)."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    found = store.annotator_for_token(token)
    return Annotator(vendor=found[0], name=found[1]) if found else None
