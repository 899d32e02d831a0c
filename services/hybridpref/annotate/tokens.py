"""Annotator tokens: how a person signs in to the annotation page.

A vendor issues one token per annotator (``hybridpref annotate token add``); the campaign store makes
the random token, keeps only its SHA-256 (table ``annotator_tokens``) and returns it once, as with the
router's API keys. A token names a vendor and an annotator: the page shows that vendor's campaign and
stores labels under that annotator's name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
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
    def annotator_for_token(self, token: str) -> tuple[str, str] | None: ...  # (vendor, annotator)
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


class TokenCache:
    """Token -> annotator answers of the store, kept ``ttl_s`` seconds (every page view and label post
    presents the cookie; this spares the store a query and the request a thread hop each time).
    A revoked token keeps working for at most ``ttl_s``; unknown tokens are not cached (a guessing
    client cannot fill the cache)."""

    def __init__(
        self, store: AnnotatorTokenStore, ttl_s: float = 10.0, size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store, self._ttl, self._size, self._clock = store, ttl_s, size, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Annotator]] = OrderedDict()

    def cached(self, token: str) -> Annotator | None:
        """The cached answer for ``token`` if fresh, else None (then call ``resolve``)."""
        with self._lock:
            hit = self._entries.get(token)
            if hit is None or hit[0] < self._clock():
                return None
            return hit[1]

    def resolve(self, token: str) -> Annotator | None:
        """Ask the store (blocking) and remember a positive answer."""
        found = resolve_token(self._store, token)
        if found is not None and self._ttl > 0:
            with self._lock:
                self._entries[token] = (self._clock() + self._ttl, found)
                self._entries.move_to_end(token)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return found
