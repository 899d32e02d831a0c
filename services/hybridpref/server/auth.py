"""Per-vendor API keys: a keys file mounted from a Secret, re-read when it changes.

The file (JSON, or YAML when it ends in ``.yaml``/``.yml``) maps vendor names to the SHA-256
of their keys, the methods they may call and their quotas::

    vendors:
      acme:
        key_sha256: 3f1c...            # or a list, to overlap an old and a new key while rotating
        methods: [RouteInstances, RouteInstancesStream]   # default: every method; "*" also means all
        instances_per_minute: 100000   # token bucket; 0 or absent = unlimited
        max_concurrent: 4              # calls at once; 0 or absent = HYBRIDPREF_API_VENDOR_MAX_CONCURRENT (32)

Keys are 256-bit random tokens made by ``hybridpref keys add`` (never chosen by people), so a
fast unsalted SHA-256 is as strong as a slow password hash here, and lets every call be checked
in microseconds. Digests are compared in constant time (``hmac.compare_digest``) against every
entry. Callers send ``authorization: Bearer <key>``.

Rotation: the file is re-stat'ed at most every ``reload_s`` seconds on the calling path; a changed
file (Kubernetes swaps the Secret's symlink) is parsed and replaces the old table in one step. A
file that does not parse is refused (log ``api_keys_reload_refused``) and the old table stays. A
file that is deleted revokes every key (fail closed; log ``api_keys_file_missing``) until it is
back. Streams re-check their key at every message, so revoking a key also stops its open streams.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from hybridpref_client.core.errors import FieldViolation, InvalidInput

KEY_PREFIX = "hpk_"
log = structlog.get_logger()
# The calling vendor, bound by the AccessInterceptor for the call's duration (unset without API keys).
_vendor: contextvars.ContextVar[str | None] = contextvars.ContextVar("hybridpref_vendor", default=None)


def current_vendor() -> str | None:
    """The vendor whose API key made the current call; ``None`` when the server runs without keys."""
    return _vendor.get()


def bind_vendor(vendor: str | None) -> contextvars.Token[str | None]:
    return _vendor.set(vendor)


def reset_vendor(token: contextvars.Token[str | None]) -> None:
    _vendor.reset(token)


@dataclass(frozen=True)
class VendorPolicy:
    """What one vendor may do."""

    vendor: str
    digests: tuple[bytes, ...]
    methods: frozenset[str]  # short method names; "*" = all
    instances_per_minute: int = 0  # 0 = unlimited
    max_concurrent: int = 0  # 0 = the server's default (AuthSettings.vendor_max_concurrent)

    def allows(self, method: str) -> bool:
        """``method`` is the full gRPC path (``/hybridpref.v1.RouterService/RouteInstances``)."""
        return "*" in self.methods or method.rsplit("/", 1)[-1] in self.methods or method in self.methods


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 stored in the keys file for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(data: Any, source: str = "keys file") -> dict[str, VendorPolicy]:
    """Vendor policies from the parsed file; ``InvalidInput`` names every bad entry."""
    vendors = data.get("vendors") if isinstance(data, dict) else None
    if not isinstance(vendors, dict):
        raise InvalidInput(FieldViolation(source, "expected an object with a 'vendors' mapping"))
    out: dict[str, VendorPolicy] = {}
    violations: list[FieldViolation] = []
    for name, entry in vendors.items():
        where = f"{source}: vendors.{name}"
        if not isinstance(entry, dict):
            violations.append(FieldViolation(where, "expected an object"))
            continue
        raw = entry.get("key_sha256")
        hashes = [raw] if isinstance(raw, str) else raw
        if not isinstance(hashes, list) or not hashes:
            violations.append(FieldViolation(f"{where}.key_sha256", "required: the hex SHA-256 of the key (or a list)"))
            continue
        try:
            digests = tuple(bytes.fromhex(h) for h in hashes)
        except (TypeError, ValueError):
            digests = ()
        if not digests or any(len(d) != 32 for d in digests):
            violations.append(FieldViolation(f"{where}.key_sha256", "expected 64 hex characters per key"))
            continue
        methods = entry.get("methods", ["*"])
        if isinstance(methods, str):
            methods = [methods]
        limits = {k: entry.get(k, 0) or 0 for k in ("instances_per_minute", "max_concurrent")}
        bad = [k for k, v in limits.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods) or bad:
            violations.append(FieldViolation(where, "methods must be a list of names; quotas whole numbers >= 0"))
            continue
        out[str(name)] = VendorPolicy(str(name), digests, frozenset(methods), **limits)
    if violations:
        raise InvalidInput(violations)
    return out


def read_keys_file(path: str | Path) -> dict[str, VendorPolicy]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return parse_keys(data, source=path.name)


class KeyStore:
    """The current key table, re-read from ``path`` when the file changes."""

    def __init__(self, path: str | Path, reload_s: float = 2.0):
        self.path = Path(path)
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._vendors: dict[str, VendorPolicy] = {}
        self.reload(force=True)

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows the Secret's ..data symlink
        return st.st_ino, st.st_mtime_ns, st.st_size

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or ``force``); returns whether the table changed.

        At start-up (``force``) a bad file raises; later a bad file keeps the old table."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                stamp = self._file_stamp()
            except FileNotFoundError:
                if force:
                    raise InvalidInput(FieldViolation("api_keys_file", f"cannot load {self.path}: no such file")) from None
                # Fail closed: a deleted keys file revokes every key (a Secret's atomic update never
                # removes the file, so this is an operator's doing, or a broken mount).
                if self._vendors or self._stamp is not None:
                    log.error("api_keys_file_missing", path=str(self.path), detail="every key is refused until it is back")
                self._vendors, self._stamp = {}, None
                return True
            try:
                if not force and stamp == self._stamp:
                    return False
                vendors = read_keys_file(self.path)
            except (OSError, ValueError, InvalidInput) as exc:
                if force:
                    raise InvalidInput(FieldViolation("HYBRIDPREF_API_KEYS_FILE", f"cannot load {self.path}: {exc}")) from None
                log.error("api_keys_reload_refused", path=str(self.path), error=str(exc)[:300])
                return False
            except Exception as exc:  # yaml errors and the like: same treatment
                if force:
                    raise InvalidInput(
                        FieldViolation("HYBRIDPREF_API_KEYS_FILE", f"cannot load {self.path}: {type(exc).__name__}")
                    ) from None
                log.error("api_keys_reload_refused", path=str(self.path), error=type(exc).__name__)
                return False
            self._vendors, self._stamp = vendors, stamp
        log.info("api_keys_loaded", path=str(self.path), vendors=len(vendors))
        return True

    def maybe_reload(self) -> None:
        if time.monotonic() - self._checked >= self.reload_s:
            self.reload()

    @property
    def vendors(self) -> dict[str, VendorPolicy]:
        return self._vendors

    def lookup(self, key: str) -> VendorPolicy | None:
        """The vendor whose key this is, or ``None``; compares against every entry in constant time."""
        self.maybe_reload()
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: VendorPolicy | None = None
        for policy in self._vendors.values():
            for stored in policy.digests:
                if hmac.compare_digest(digest, stored):
                    found = policy
        return found


def bearer_key(metadata: dict[str, str]) -> str | None:
    """The key from ``authorization: Bearer <key>`` metadata, if present."""
    value = metadata.get("authorization")
    if not isinstance(value, str):
        return None
    scheme, _, key = value.strip().partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def add_vendor(
    path: str | Path,
    vendor: str,
    *,
    methods: list[str] | None = None,
    instances_per_minute: int = 0,
    max_concurrent: int = 0,
    key: str | None = None,
) -> str:
    """Add (or replace) ``vendor`` in the keys file at ``path`` (created if missing); returns the key.

    The key itself is never stored; only its hash is."""
    path = Path(path)
    yaml_file = path.suffix in (".yaml", ".yml")
    data: dict[str, Any] = {"vendors": {}}
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if yaml_file:
            import yaml

            data = yaml.safe_load(text) or {"vendors": {}}
        else:
            data = json.loads(text or "{}") or {"vendors": {}}
        data.setdefault("vendors", {})
    key = key or new_key()
    entry: dict[str, Any] = {"key_sha256": hash_key(key), "methods": methods or ["*"]}
    if instances_per_minute:
        entry["instances_per_minute"] = instances_per_minute
    if max_concurrent:
        entry["max_concurrent"] = max_concurrent
    data["vendors"][vendor] = entry
    parse_keys(data, source=path.name)  # never write a file the service would refuse
    if yaml_file:
        import yaml

        text = yaml.safe_dump(data, sort_keys=True)
    else:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: a watching router never reads half a file
    return key
