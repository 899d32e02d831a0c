"""A real router process (``hybridpref serve router``) for the fault tests: it can be killed with SIGKILL and
restarted on the same campaign store. Its backends (tagger ``fast``, judge ``replay``, the packaged predictor
bundle) run in the test process on loopback (``Backends``); the router talks real gRPC to them.

Synthetic instances (``instances``) carry a recorded ``gpt4`` label for the replay judge; nothing is copied
from the shared data.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass

from hybridpref.server.settings import Settings
from support.postgres import free_port

START_TIMEOUT_S = 60.0


@dataclass
class Backends:
    """The three backends, running in a ``BackgroundLoop``; ``addresses``: name -> host:port."""

    services: dict
    addresses: dict[str, str]

    @classmethod
    def start(cls, background_loop) -> Backends:
        from hybridpref.cli.stack import BACKENDS, handle_for
        from hybridpref.server.server import start_service

        settings = Settings(tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"})
        services = {}
        for name in BACKENDS:
            services[name] = background_loop.run(start_service(handle_for(name, settings), settings, port=0, metrics_port=-1))
        for running in services.values():
            background_loop.run(running.loaded.wait(), timeout=300)
        return cls(services, {n: r.address for n, r in services.items()})

    def stop(self, background_loop) -> None:
        for running in self.services.values():
            background_loop.run(running.stop(0.2))


class RouterProcess:
    """``hybridpref serve router --db DB_URL`` on a free port."""

    def __init__(self, backends: Backends, db_url: str, **env: str):
        self.backends = backends
        self.db_url = db_url
        self.extra_env = env
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RouterProcess:
        from hybridpref.cli.stack import wait_serving

        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDPREF_")}
        env.update({f"HYBRIDPREF_{n.upper()}_ADDRESS": a for n, a in self.backends.addresses.items()})
        env.update(HYBRIDPREF_LOG_LEVEL="WARNING", HYBRIDPREF_BACKEND_CHECK_S="0.2", **self.extra_env)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hybridpref.cli.main",
                "serve",
                "router",
                "--port",
                str(self.port),
                "--metrics-port",
                "-1",
                "--db",
                self.db_url,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_serving(self.address, START_TIMEOUT_S, service="hybridpref.v1.RouterService"):
            self.stop()
            raise RuntimeError("the router process did not become SERVING")
        return self

    def kill9(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def instances(prefix: str, n: int, seed: int) -> list[dict]:
    """``n`` synthetic instances ``{prefix}0..``, each with a recorded gpt4 label (A / B / tie)."""
    rng = random.Random(seed)
    words = ("river", "stone", "lamp", "orbit", "quill", "harbor", "ember", "maple", "cipher", "lattice")
    out = []
    for k in range(n):
        topic = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        out.append(
            {
                "id": f"{prefix}{k}",
                "prompt": f"Explain {topic} in one paragraph.",
                "response_a": f"{topic.capitalize()} is " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + ".",
                "response_b": "Briefly: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + ".",
                "lm_labels": {"gpt4": rng.choice(("A", "B", "A", "B", "tie"))},
            }
        )
    return out
