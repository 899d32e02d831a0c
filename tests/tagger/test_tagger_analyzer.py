"""Analyzer backends: strict parsing, the OpenAI-compatible client, the LM likelihood scorer.

The OpenAI-compatible backend is tested against a tiny canned-response HTTP server on
127.0.0.1 started here: it exercises transport, strict parsing and the "unparsed" path
only (no real model behind it).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from hybridpref.common.vocabulary import ANALYZER_DIMENSIONS, TAG_NAMES
from hybridpref.tagger.analyzer import UNPARSED, LMAnalyzer, answers_to_bits, format_constraints, in_context_material
from hybridpref.tagger.openai_backend import OpenAIAnalyzer, build_messages, parse_answer
from hybridpref_client.core.errors import BackendUnavailable


@pytest.mark.parametrize(
    "dim,content,expected",
    [
        ("safety_concern", '{"answer": "moderate"}', "moderate"),
        ("safety_concern", '```json\n{"answer": "High."}\n```', "high"),
        ("safety_concern", '{"answer": "very high"}', UNPARSED),
        ("safety_concern", "moderate", UNPARSED),
        ("safety_concern", '{"label": "moderate"}', UNPARSED),
        ("safety_concern", '{"answer": 3}', UNPARSED),
        ("subject_of_expertise", '{"answer": ["Mathematics", "statistics"]}', "Mathematics|Statistics"),
        (
            "subject_of_expertise",
            '{"answer": "Journalism, media studies and communication"}',
            "Journalism, media studies and communication",
        ),
        ("subject_of_expertise", '{"answer": ["Journalism", "Media studies"]}', UNPARSED),
        ("subject_of_expertise", '{"answer": []}', UNPARSED),
        ("format_constraints", '{"answer": "yes"}', "present"),
        ("format_constraints", '{"answer": "No"}', "absent"),
        ("languages", '{"answer": "no"}', "non-English"),
        ("languages", '{"answer": "maybe"}', UNPARSED),
        ("open_endedness", None, UNPARSED),
    ],
)
def test_strict_parsing(dim, content, expected):
    assert parse_answer(dim, content) == expected


def test_unparsed_never_becomes_a_tag():
    ans = {d: UNPARSED for d in ANALYZER_DIMENSIONS}
    assert answers_to_bits(ans).sum() == 0
    ans["safety_concern"] = "moderate"
    ans["subject_of_expertise"] = "Religion|Chemical engineering"
    on = {TAG_NAMES[j] for j in np.flatnonzero(answers_to_bits(ans))}
    assert on == {"safety_concern:moderate", "subject_of_expertise:Religion", "subject_of_expertise:Chemical engineering"}


def test_prompts_list_every_option():
    msgs = build_messages("Solve x + 1 = 2", "subject_of_expertise")
    assert "Family and consumer science" in msgs[1]["content"] and "JSON" in msgs[0]["content"]


def test_surface_rules():
    assert format_constraints("Answer in 3 bullet points.") == "present"
    assert format_constraints("Write the result as a JSON object.") == "present"
    assert format_constraints("Why is the sky blue?") == "absent"
    assert in_context_material("Fix this code:\n```python\nprint(1\n```") == "present"
    assert in_context_material("What is love?") == "absent"


class _Canned(BaseHTTPRequestHandler):
    """Replies by dimension, recognised from the question in the prompt."""

    replies = {
        "subject": '{"answer": ["Mathematics"]}',
        "English": '{"answer": "yes"}',
        "safety": "I think it is fine.",  # not JSON -> unparsed
    }
    status = 200

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            return
        text = body["messages"][1]["content"]
        content = next((v for k, v in self.replies.items() if k in text), '{"answer": "zzz"}')
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    _Canned.status = 200


def test_openai_backend_parses_and_marks_unparsed(server):
    a = OpenAIAnalyzer(server, "canned")
    a.load()
    (ans,) = a.analyze(["What is 2 + 2?"], [True])
    a.close()
    assert ans["subject_of_expertise"] == "Mathematics"
    assert ans["languages"] == "English"
    assert ans["safety_concern"] == UNPARSED
    assert ans["open_endedness"] == UNPARSED  # "zzz" is not an option
    on = {TAG_NAMES[j] for j in np.flatnonzero(answers_to_bits(ans))}
    assert on == {"subject_of_expertise:Mathematics", "languages:English"}


def test_openai_backend_errors_are_backend_unavailable(server):
    _Canned.status = 503
    a = OpenAIAnalyzer(server, "canned")
    a.load()
    with pytest.raises(BackendUnavailable):
        a.analyze(["hi"], [True])
    dead = OpenAIAnalyzer("http://127.0.0.1:9/v1", "x", timeout_s=2)
    dead.load()
    with pytest.raises(BackendUnavailable):
        dead.analyze(["hi"], [True])


def test_tagger_with_openai_backend(server):
    from hybridpref.tagger.core import Tagger
    from hybridpref_client.core.instances import PreferenceInstance

    t = Tagger("fast", analyzer="openai", openai_base_url=server, openai_model="canned")
    b = t.tag([PreferenceInstance("x", "What is 2 + 2?", "4", "Four")])
    assert b.analyzer[0]["safety_concern"] == UNPARSED
    assert not any(TAG_NAMES[j].startswith("safety_concern:") for j in np.flatnonzero(b.tag_matrix[0]))


@pytest.mark.slow
def test_lm_backend_scores_closed_options_with_smollm2():
    a = LMAnalyzer(dimensions=("safety_concern", "languages"), max_prompt_tokens=32)
    a.load()
    (ans,) = a.analyze(["Solve for x: 3x + 5 = 20."], [True])
    assert ans["safety_concern"] in ANALYZER_DIMENSIONS["safety_concern"]
    assert ans["languages"] in ("English", "non-English")
    assert ans["format_constraints"] == UNPARSED  # not scored: no tag, never invented
    scores = a._score_options(a._prefix("Is this English?", "languages"), a._option_ids["languages"])
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores < 0)


def test_lm_decision_rules():
    a = LMAnalyzer()
    subj = ANALYZER_DIMENSIONS["subject_of_expertise"]
    scores = np.full(len(subj), -5.0)
    scores[subj.index("Religion")], scores[subj.index("History")], scores[subj.index("Law")] = -1.0, -1.1, -2.0
    assert a._decide("subject_of_expertise", scores) == "Religion|History"  # within 0.15 nats/token
    assert a._decide("format_constraints", np.array([-0.2, -3.0])) == "present"
    assert a._decide("languages", np.array([-3.0, -0.2])) == "non-English"
    assert a._decide("safety_concern", np.array([-1.0, np.nan, -2.0, -3.0])) == UNPARSED
