"""The embedded SmolLM2 judge (real packaged model) and the openai backend against a real
OpenAI-compatible server (tests/support/openai_server.py) serving that same model on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.openai_server import create_server

from hybridpref.common import aggregate
from hybridpref.judge.core import Deadline, Judge, ScoreRequest
from hybridpref.judge.embedded import EmbeddedBackend
from hybridpref.judge.templates import MULTIPREF, SHORT
from hybridpref_client.core.errors import BackendUnavailable, DeadlineExceeded
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance, read_jsonl

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "judge_pairs.jsonl"


@pytest.fixture(scope="module")
def pairs() -> list[PreferenceInstance]:
    return read_jsonl(str(FIXTURE))


@pytest.fixture(scope="module")
def embedded() -> EmbeddedBackend:
    backend = EmbeddedBackend()
    backend.load()
    return backend


@pytest.fixture(scope="module")
def server(embedded: EmbeddedBackend) -> Iterator[int]:
    srv, port = create_server(embedded, api_key="test-key")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield port
    srv.shutdown()
    srv.server_close()


# --- embedded ---------------------------------------------------------------------------------------
def test_embedded_both_mode(embedded: EmbeddedBackend, pairs: list[PreferenceInstance]) -> None:
    judge = Judge(embedded)
    assert judge.ready and judge.judge_id == "embedded:SmolLM2-135M-Instruct"
    out = judge.judge(pairs[:4])
    assert [j.id for j in out] == [p.id for p in pairs[:4]]
    for j in out:
        assert j.verdict_ab != Label.UNSPECIFIED and j.verdict_ba != Label.UNSPECIFIED
        assert 0.0 <= j.confidence <= 1.0 and j.template_version == "multipref@1"
        assert j.order_inconsistent == (j.verdict_ab.winner != j.verdict_ba.winner)
        if j.order_inconsistent:
            assert j.label == Label.TIE and j.confidence <= aggregate.INCONSISTENT_CONFIDENCE_CAP
        else:
            assert j.label.winner == j.verdict_ab.winner
    assert out[:2] == judge.judge(pairs[:2])  # deterministic


def test_embedded_random_mode_and_templates(embedded: EmbeddedBackend, pairs: list[PreferenceInstance]) -> None:
    judge = Judge(embedded, default_template="short")
    a = judge.judge(pairs[:4], mode=PositionMode.RANDOM, seed=11)
    assert all(j.template_version == "short@1" and not j.order_inconsistent for j in a)
    for j in a:
        judged_ba = aggregate.random_order_swapped(j.id, 11)
        assert (j.verdict_ba != Label.UNSPECIFIED) == judged_ba and (j.verdict_ab != Label.UNSPECIFIED) != judged_ba
        assert j.label in (Label.A_BETTER, Label.TIE, Label.B_BETTER)  # 3-option template
    assert a[:2] == judge.judge(pairs[:2], mode=PositionMode.RANDOM, seed=11)


def test_embedded_scores_are_distributions_and_prefix_reuse_is_exact(
    embedded: EmbeddedBackend, pairs: list[PreferenceInstance]
) -> None:
    req = [ScoreRequest(pairs[0], False), ScoreRequest(pairs[0], True)]
    reused = embedded.score(req, MULTIPREF, Deadline(None))  # second one reuses the first's prefix cache
    embedded._last_prefix = None
    fresh = embedded.score(req[1:], MULTIPREF, Deadline(None))
    np.testing.assert_allclose(reused[1], fresh[0], atol=1e-4)
    for d in reused:
        assert d.shape == (5,) and d.sum() == pytest.approx(1.0) and (d >= 0).all()
    pre_ab, suf_ab = embedded.prompt_ids(req[0], SHORT)
    pre_ba, suf_ba = embedded.prompt_ids(req[1], SHORT)
    assert pre_ab == pre_ba and len(suf_ab) == len(suf_ba)  # same prefix, equal-length orders


def test_embedded_truncates_long_inputs_fairly(embedded: EmbeddedBackend, pairs: list[PreferenceInstance]) -> None:
    small = EmbeddedBackend(max_prompt_tokens=400)
    small._tok, small._model, small._cache_kw = embedded._tok, embedded._model, embedded._cache_kw  # share weights
    long = PreferenceInstance("long", "Summarise. " * 300, "alpha " * 900, "beta " * 50)
    pre, suf = small.prompt_ids(ScoreRequest(long, False), MULTIPREF)
    assert len(pre) + len(suf) <= 400
    text = small.tokenizer.decode(pre + suf)
    assert "beta " * 50 in text and "[...]" in text  # the short response is kept whole
    assert Judge(small).judge([long], mode=PositionMode.RANDOM)[0].confidence > 0


def test_embedded_deadline(embedded: EmbeddedBackend, pairs: list[PreferenceInstance]) -> None:
    with pytest.raises(DeadlineExceeded):
        Judge(embedded).judge(pairs * 1 + [PreferenceInstance(f"d{i}", "q", "a", "b") for i in range(50)], deadline=0.3)


# --- openai backend against the real loopback server -----------------------------------------------
def test_server_models_and_auth(server: int) -> None:
    base = f"http://127.0.0.1:{server}/v1"
    assert httpx.get(f"{base}/models").status_code == 401
    resp = httpx.get(f"{base}/models", headers={"Authorization": "Bearer test-key"})
    assert resp.json()["data"][0]["id"] == "SmolLM2-135M-Instruct"
    bad = httpx.post(f"{base}/chat/completions", json={"messages": []}, headers={"Authorization": "Bearer test-key"})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]


def test_server_generates_with_logprobs(server: int) -> None:
    resp = httpx.post(
        f"http://127.0.0.1:{server}/v1/chat/completions",
        headers={"Authorization": "Bearer test-key"},
        json={
            "model": "x",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
        },
        timeout=60,
    )
    choice = resp.json()["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert 1 <= len(tokens) <= 5 and choice["message"]["content"] == "".join(t["token"] for t in tokens)
    for t in tokens:  # greedy: the chosen token is the top alternative
        assert len(t["top_logprobs"]) == 3 and t["logprob"] == pytest.approx(t["top_logprobs"][0]["logprob"])


def test_openai_backend_against_real_server(
    server: int, pairs: list[PreferenceInstance], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "test-key")
    judge = Judge.from_config(
        "openai",
        base_url=f"http://127.0.0.1:{server}/v1",
        model="SmolLM2-135M-Instruct",
        api_key_env="JUDGE_KEY",
        concurrency=2,
        max_tokens=2,
    )
    try:
        out = judge.judge(pairs[:3], template="short", deadline=120)
    finally:
        judge.backend.close()
    assert [j.id for j in out] == [p.id for p in pairs[:3]]
    assert all(j.judge_id == "openai:SmolLM2-135M-Instruct" and j.template_version == "short@1" for j in out)
    # logprobs path: verdicts from option probabilities in both orders, soft confidences
    assert all(j.verdict_ab != Label.UNSPECIFIED and j.verdict_ba != Label.UNSPECIFIED for j in out)
    assert all(0.0 <= j.confidence <= 1.0 for j in out)


def test_openai_backend_wrong_key_is_unavailable(server: int, pairs: list[PreferenceInstance]) -> None:
    judge = Judge.from_config("openai", base_url=f"http://127.0.0.1:{server}/v1", api_key="wrong")
    with pytest.raises(BackendUnavailable, match="401"):
        judge.judge(pairs[:1], deadline=30)
    judge.backend.close()
