"""Hot reload of the predictor's bundle: poll the folder, load a new bundle when it changes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from hybridpref_client.core.errors import NotReady

log = structlog.get_logger()


def bundle_signature(path: Path) -> tuple:
    """What changes when a bundle is replaced: the resolved folder (a ``current`` symlink
    repointed) and its files' sizes and mtimes (a folder rewritten in place)."""
    try:
        real = path.resolve()
        return (str(real), tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in real.iterdir())))
    except OSError:
        return ("missing", str(path))


class BundleWatcher:
    """Hot reload: poll the bundle folder and load a new bundle when it changes.

    In-flight calls finish on the old bundle (the core swaps snapshots atomically); a
    bad new bundle is refused and the old one keeps serving (the log says why)."""

    def __init__(self, path: Path, load: Callable[[], str], interval_s: float, on_change: list[Callable[[], None]]):
        """``load`` loads the bundle at ``path`` and returns its version (raises ``NotReady`` on a bad one)."""
        self._path, self._load, self._interval_s, self._on_change = path, load, interval_s, on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
        self._seen = bundle_signature(path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            signature = bundle_signature(self._path)
            if signature == self._seen:
                continue
            self._seen = signature
            try:
                log.info("bundle_reloaded", bundle_version=self._load())
            except NotReady as exc:
                log.error("bundle_reload_refused", error=str(exc))
            for callback in self._on_change:
                callback()
