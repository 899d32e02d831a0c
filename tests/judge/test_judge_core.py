"""Judge core without a model: label mapping, position-bias aggregation, templates, replay backend,
the OpenAI backend's failure behaviour against small misbehaving local HTTP servers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hybridpref.common import aggregate
from hybridpref.common.openai_http import MalformedResponse
from hybridpref.judge.core import Deadline, Judge, ScoreRequest, ScoringBackend
from hybridpref.judge.openai_backend import OpenAIBackend, parse_completion
from hybridpref.judge.templates import MULTIPREF, SHORT, PromptTemplate, get_template
from hybridpref_client.core.errors import BackendUnavailable, DeadlineExceeded, InvalidInput
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance, read_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "judge_pairs.jsonl"


@pytest.fixture(scope="module")
def pairs() -> list[PreferenceInstance]:
    return read_jsonl(str(FIXTURE))


# --- label mapping and aggregation -----------------------------------------------------------------
def test_swapped_distribution_maps_back_to_stored_order() -> None:
    presented = aggregate.one_hot(Label.A_MUCH_BETTER)  # "first shown" much better, shown swapped
    assert aggregate.verdict(aggregate.to_stored_order(presented, swapped=True)) == Label.B_MUCH_BETTER
    assert aggregate.verdict(aggregate.to_stored_order(presented, swapped=False)) == Label.A_MUCH_BETTER


def test_verdict_picks_side_before_level() -> None:
    # A side 0.6 split 0.3/0.3 beats B_BETTER 0.4 even though no single A level does
    assert aggregate.verdict(np.array([0.3, 0.3, 0.0, 0.4, 0.0])).winner == "A"
    assert aggregate.verdict(np.array([0.1, 0.2, 0.5, 0.1, 0.1])) == Label.TIE
    assert aggregate.verdict(np.array([0.0, 0.0, 0.1, 0.2, 0.7])) == Label.B_MUCH_BETTER


def test_both_orders_consistent_and_inconsistent() -> None:
    agree = aggregate.both(np.array([0.0, 0.8, 0.1, 0.1, 0.0]), np.array([0.1, 0.6, 0.2, 0.1, 0.0]))
    assert agree.label == Label.A_BETTER and not agree.order_inconsistent
    assert agree.confidence == pytest.approx(0.75)  # mean A-side mass (0.8 + 0.7) / 2
    # a purely positional judge: "first" in both orders -> A in stored AB, B in stored BA
    flip = aggregate.both(aggregate.one_hot(Label.A_BETTER), aggregate.one_hot(Label.B_BETTER))
    assert flip.label == Label.TIE and flip.order_inconsistent and flip.confidence == 0.0
    assert (flip.verdict_ab, flip.verdict_ba) == (Label.A_BETTER, Label.B_BETTER)
    hesitant = aggregate.both(np.array([0.0, 0.4, 0.35, 0.25, 0.0]), np.array([0.0, 0.25, 0.35, 0.4, 0.0]))
    assert hesitant.order_inconsistent and 0.3 <= hesitant.confidence <= aggregate.INCONSISTENT_CONFIDENCE_CAP


def test_random_order_is_seeded_and_balanced() -> None:
    ids = [f"x{i}" for i in range(400)]
    a = [aggregate.random_order_swapped(i, 7) for i in ids]
    assert a == [aggregate.random_order_swapped(i, 7) for i in ids]
    assert a != [aggregate.random_order_swapped(i, 8) for i in ids]
    assert 150 < sum(a) < 250


# --- templates ------------------------------------------------------------------------------------
def test_templates_lookup_and_versions() -> None:
    assert get_template("multipref").template_version == "multipref@1"
    assert get_template("SHORT@1") is SHORT
    assert get_template(None, default="short") is SHORT
    with pytest.raises(InvalidInput) as err:
        get_template("nope")
    assert err.value.violations[0].field == "template"
    with pytest.raises(InvalidInput):
        get_template("multipref@9")
    text = MULTIPREF.user_message("Q?", "first", "second")
    assert text.index("first") < text.index("second")
    for word in ("Helpfulness", "Truthfulness", "Harmlessness"):
        assert word in text
    assert {label for _, label in MULTIPREF.options} == set(Label) - {Label.UNSPECIFIED}


# --- core with a scripted position-biased backend (tests the core's mapping, not a model) ----------
class FirstSlotBackend(ScoringBackend):
    """Always says the response shown first is much better: the worst position bias."""

    judge_id = "test:first-slot"

    def score(self, requests: Sequence[ScoreRequest], template: PromptTemplate, deadline: Deadline) -> list[np.ndarray | None]:
        return [aggregate.one_hot(Label.A_MUCH_BETTER) for _ in requests]


def test_core_both_mode_flags_positional_judge(pairs: list[PreferenceInstance]) -> None:
    out = Judge(FirstSlotBackend()).judge(pairs)
    assert [j.id for j in out] == [p.id for p in pairs]
    assert all(j.order_inconsistent and j.label == Label.TIE and j.confidence == 0.0 for j in out)
    assert all(j.verdict_ab == Label.A_MUCH_BETTER and j.verdict_ba == Label.B_MUCH_BETTER for j in out)
    assert {j.template_version for j in out} == {"multipref@1"}


def test_core_random_mode_one_order(pairs: list[PreferenceInstance]) -> None:
    judge = Judge(FirstSlotBackend())
    out = judge.judge(pairs, mode=PositionMode.RANDOM, seed=3, template="short")
    for j in out:
        swapped = aggregate.random_order_swapped(j.id, 3)
        assert (j.verdict_ab == Label.UNSPECIFIED) == swapped
        assert (j.verdict_ba == Label.UNSPECIFIED) != swapped
        assert j.label == (Label.B_MUCH_BETTER if swapped else Label.A_MUCH_BETTER)
        assert not j.order_inconsistent and j.template_version == "short@1"
    assert out == judge.judge(pairs, mode=PositionMode.RANDOM, seed=3, template="short")


def test_core_rejects_bad_input(pairs: list[PreferenceInstance]) -> None:
    judge = Judge(FirstSlotBackend())
    dup = [pairs[0], pairs[0]]
    with pytest.raises(InvalidInput) as err:
        judge.judge(dup)
    assert err.value.violations[0].field == "instances[1].id"
    with pytest.raises(InvalidInput):
        judge.judge(pairs, template="bogus")
    with pytest.raises(InvalidInput):
        Judge.from_config("nonsense")
    with pytest.raises(InvalidInput):
        Judge.from_config("replay", no_such_option=1)
    assert judge.judge([]) == []


# --- replay ---------------------------------------------------------------------------------------
def test_replay_recorded_labels(pairs: list[PreferenceInstance]) -> None:
    judge = Judge.from_config("replay", default_judge="GPT4 pair")  # prefix of "gpt-4 (pair-v2, both orders)"
    out = {j.id: j for j in judge.judge(pairs)}
    with pytest.raises(InvalidInput, match="ambiguous"):  # also GPT-4/Vanilla_NoRules here
        judge.judge(pairs, replay_judge="gpt4")
    assert out["j1"].label == Label.A_BETTER and out["j1"].confidence == 1.0
    assert out["j2"].label == Label.B_BETTER
    assert out["j3"].label == Label.TIE and out["j3"].order_inconsistent and out["j3"].confidence == 0.0
    assert out["j4"].label == Label.TIE and not out["j4"].order_inconsistent and out["j4"].confidence == 1.0
    assert out["j1"].judge_id == "replay:gpt-4 (pair-v2, both orders)"


def test_replay_per_order_keys(pairs: list[PreferenceInstance]) -> None:
    judge = Judge.from_config("replay")
    sub = [p for p in pairs if p.id in ("j2", "j3", "j5", "j6")]
    out = {j.id: j for j in judge.judge(sub, replay_judge="GPT-4/Vanilla_NoRules")}
    assert out["j2"].label == Label.B_BETTER and out["j2"].verdict_ab == out["j2"].verdict_ba == Label.B_BETTER
    assert out["j3"].order_inconsistent and out["j3"].label == Label.TIE
    assert out["j5"].verdict_ba == Label.UNSPECIFIED and out["j5"].label == Label.B_BETTER
    assert out["j6"].verdict_ab == Label.UNSPECIFIED and out["j6"].label == Label.A_BETTER
    rnd = judge.judge(sub, replay_judge="GPT-4/Vanilla_NoRules", mode=PositionMode.RANDOM, seed=1)
    assert all(not j.order_inconsistent for j in rnd)
    assert all((j.verdict_ab == Label.UNSPECIFIED) != (j.verdict_ba == Label.UNSPECIFIED) for j in rnd)


def test_replay_missing_label_is_invalid_input(pairs: list[PreferenceInstance]) -> None:
    judge = Judge.from_config("replay")
    with pytest.raises(InvalidInput) as err:  # j4 recorded null for gpt-3.5-turbo; j2, j3 have none
        judge.judge(pairs, replay_judge="gpt-3.5-turbo")
    fields = {v.field for v in err.value.violations}
    assert "instances[3].lm_labels" in fields and "instances[0].lm_labels" not in fields
    with pytest.raises(InvalidInput):
        judge.judge(pairs)  # no judge named anywhere


# --- OpenAI response parsing ------------------------------------------------------------------------
def test_parse_completion_logprobs_and_text() -> None:
    data = {
        "choices": [
            {
                "message": {"content": " A"},
                "logprobs": {
                    "content": [
                        {"token": " ", "logprob": -0.1, "top_logprobs": []},
                        {
                            "token": " A",
                            "logprob": -0.3,
                            "top_logprobs": [
                                {"token": " A", "logprob": float(np.log(0.6))},
                                {"token": "B", "logprob": float(np.log(0.2))},
                                {"token": "x", "logprob": float(np.log(0.2))},
                            ],
                        },
                    ]
                },
            }
        ]
    }
    dist = parse_completion(data, SHORT)
    assert dist is not None and dist[int(Label.A_BETTER) - 1] == pytest.approx(0.75)
    text_only = {"choices": [{"message": {"content": "I pick 4."}, "logprobs": None}]}
    assert aggregate.verdict(parse_completion(text_only, MULTIPREF)) == Label.B_BETTER
    assert parse_completion({"choices": [{"message": {"content": "no idea"}}]}, SHORT) is None
    with pytest.raises(MalformedResponse):  # an error body is not "no verdict" (issue 18): never a TIE label
        parse_completion({"error": "x"}, SHORT)


# --- OpenAI backend failure behaviour ---------------------------------------------------------------
class _Scripted(BaseHTTPRequestHandler):
    """Answers from a script: list of (status, headers, delay_s); the last entry repeats."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.server
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with srv.lock:  # type: ignore[attr-defined]
            step = srv.script[min(srv.calls, len(srv.script) - 1)]  # type: ignore[attr-defined]
            srv.calls += 1  # type: ignore[attr-defined]
        status, headers, delay = step
        time.sleep(delay)
        body = json.dumps({"choices": [{"message": {"content": "A"}}]} if status == 200 else {"error": "busy"}).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # client gave up (deadline)


@pytest.fixture()
def scripted() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    server.script, server.calls, server.lock = [(200, {}, 0.0)], 0, threading.Lock()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _backend(port: int, **kw: object) -> Judge:
    opts = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "backoff_s": 0.05, "max_retries": 2}
    opts.update(kw)
    return Judge.from_config("openai", **opts)


def test_openai_connection_refused_is_unavailable_quickly(pairs: list[PreferenceInstance]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        _backend(port).judge(pairs[:2], deadline=10)
    assert time.monotonic() - t0 < 2.0
    assert err.value.retry_after_s is not None


def test_openai_429_retries_then_unavailable(scripted: ThreadingHTTPServer, pairs: list[PreferenceInstance]) -> None:
    scripted.script = [(429, {"Retry-After": "0.2"}, 0.0)]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        _backend(scripted.server_address[1], concurrency=1).judge(pairs[:1], mode=PositionMode.RANDOM, deadline=10)
    assert scripted.calls == 3  # type: ignore[attr-defined]  # 1 + max_retries
    assert err.value.retry_after_s == pytest.approx(0.2)
    assert 0.35 < time.monotonic() - t0 < 3.0  # it did wait Retry-After between attempts


def test_openai_503_then_ok_recovers(scripted: ThreadingHTTPServer, pairs: list[PreferenceInstance]) -> None:
    scripted.script = [(503, {}, 0.0), (200, {}, 0.0)]  # type: ignore[attr-defined]
    out = _backend(scripted.server_address[1], concurrency=1).judge(pairs[:1], mode=PositionMode.RANDOM, template="short")
    assert len(out) == 1 and out[0].label.winner in ("A", "B")  # text "A" parsed, mapped by order
    assert scripted.calls == 2  # type: ignore[attr-defined]


def test_openai_retry_after_beyond_deadline(scripted: ThreadingHTTPServer, pairs: list[PreferenceInstance]) -> None:
    scripted.script = [(503, {"Retry-After": "20"}, 0.0)]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        _backend(scripted.server_address[1]).judge(pairs[:1], deadline=2)
    assert time.monotonic() - t0 < 1.0 and err.value.retry_after_s == pytest.approx(20)


def test_openai_slow_server_deadline(scripted: ThreadingHTTPServer, pairs: list[PreferenceInstance]) -> None:
    scripted.script = [(200, {}, 3.0)]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        _backend(scripted.server_address[1]).judge(pairs[:2], deadline=0.5)
    assert time.monotonic() - t0 < 1.5


def test_openai_api_key_from_secret_file(tmp_path: Path, scripted: ThreadingHTTPServer) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    backend = OpenAIBackend(f"http://127.0.0.1:{scripted.server_address[1]}/v1", api_key_file=secret)
    backend.load()
    assert backend.http._client.headers["authorization"] == "Bearer s3cret"
    with pytest.raises(InvalidInput):
        OpenAIBackend("http://x/v1", api_key_file=tmp_path / "missing").load()
    with pytest.raises(InvalidInput):
        OpenAIBackend("ftp://x")
    with pytest.raises(InvalidInput, match="base_url"):
        Judge.from_config("openai", base_url=None, model=None)
