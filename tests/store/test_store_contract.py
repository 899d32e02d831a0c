"""The campaign store's contract (hybridpref.store.api) on both engines: a SQLite file and a real
PostgreSQL server (tests/support/postgres.py)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from support.postgres import postgres_server, store_url  # noqa: F401  (fixtures)
from support.store_data import candidates

from hybridpref.store.api import CampaignSpec, FeatureVector, HumanLabel
from hybridpref.store.sql import SqlCampaignStore
from hybridpref.store.stats import Z95
from hybridpref_client.core.errors import AlreadyExists, InvalidInput, NotFound, NotReady


@pytest.fixture
def store(store_url):  # noqa: F811
    s = SqlCampaignStore.open(store_url, upgrade=True)
    yield s
    s.close()


def spec(name="c", vendor="acme", **kw) -> CampaignSpec:
    base = dict(budget_kind="count", budget_total=10, expected_instances=None)
    base.update(kw)
    return CampaignSpec(vendor=vendor, name=name, **base)


def all_human(store, name="c", vendor="acme", n=10, votes=1, seed=0, prefix="i"):
    """A campaign whose first batch is all human-routed (budget = batch size, no stream estimate)."""
    store.create_campaign(spec(name, vendor, budget_total=n, votes_per_pair=votes))
    return store.decide_batch(vendor, name, "b0", candidates(prefix, n, seed))


def test_campaigns_are_per_vendor(store):
    created = store.create_campaign(spec("c", "acme"))
    assert created.spent == 0 and created.routed == 0 and created.spec.vendor == "acme"
    with pytest.raises(AlreadyExists):
        store.create_campaign(spec("c", "acme"))
    other = store.create_campaign(spec("c", "globex", budget_total=3))  # same name, another vendor: its own
    assert other.id != created.id
    assert [c.spec.name for c in store.list_campaigns("acme")] == ["c"]
    assert store.get_campaign("globex", "c").spec.budget_total == 3
    assert store.list_campaigns("initech") == []
    store.decide_batch("acme", "c", "b0", candidates("i", 5, 1))
    for call in (
        lambda: store.get_campaign("initech", "c"),
        lambda: store.decide_batch("initech", "c", "b0", candidates("i", 1, 1)),
        lambda: store.submit_labels("initech", "c", [HumanLabel("i0", "a", "A")]),
        lambda: list(store.export_rows("initech", "c")),
        lambda: store.status("initech", "c"),
        lambda: store.pending_pairs("initech", "c", "a"),
    ):
        with pytest.raises(NotFound):
            call()
    # globex's campaign of the same name never saw acme's instances
    assert store.get_campaign("globex", "c").routed == 0
    results = store.submit_labels("globex", "c", [HumanLabel("i0", "a", "A")])
    assert results[0].status == "rejected" and "instance_id" in results[0].error


def test_invalid_spec_names_the_fields(store):
    with pytest.raises(InvalidInput) as err:
        store.create_campaign(
            CampaignSpec(
                vendor="",
                name="x" * 500,
                budget_kind="labels",
                budget_total=-1,
                votes_per_pair=0,
                expected_instances=0,
                exploration_share=1.5,
            )
        )
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "vendor",
        "name",
        "budget.kind",
        "budget.total",
        "votes_per_pair",
        "expected_instances",
        "exploration_share",
    }
    with pytest.raises(InvalidInput, match="whole number"):
        store.create_campaign(spec(budget_total=2.5))


def test_resent_ids_replay_and_spend_nothing(store):
    store.create_campaign(spec(budget_total=40, expected_instances=100))
    first = store.decide_batch("acme", "c", "b0", candidates("i", 20, 3))
    after_first = store.get_campaign("acme", "c")
    assert after_first.routed == 20 and after_first.spent == sum(d.human for d in first)
    assert not any(d.replayed for d in first)
    again = store.decide_batch("acme", "c", "b0-retry", candidates("i", 20, 3))
    assert all(d.replayed for d in again)
    assert [(d.instance_id, d.human, d.exploration, d.batch_id) for d in again] == [
        (d.instance_id, d.human, d.exploration, d.batch_id) for d in first
    ]
    assert store.get_campaign("acme", "c") == after_first
    mixed = candidates("i", 10, 3, start=15)  # i15..i19 stored, i20..i24 new
    out = store.decide_batch("acme", "c", "b1", mixed)
    assert [d.replayed for d in out] == [True] * 5 + [False] * 5
    assert [d.instance_id for d in out] == [c.instance_id for c in mixed]
    after = store.get_campaign("acme", "c")
    assert after.routed == 25
    assert after.spent == after.human_routed == sum(d.human for d in first) + sum(d.human for d in out[5:])


def test_invalid_batch_stores_nothing(store):
    store.create_campaign(spec())
    bad = candidates("i", 3, 0)
    bad[1] = replace(bad[1], instance_id=bad[0].instance_id)
    bad[2] = replace(bad[2], score=math.nan, lm_label="C_BETTER", signals={"p": math.inf})
    with pytest.raises(InvalidInput) as err:
        store.decide_batch("acme", "c", "b0", bad)
    fields = {v.field for v in err.value.violations}
    assert fields == {"candidates[1].instance_id", "candidates[2].score", "candidates[2].lm_label", "candidates[2].signals"}
    assert store.get_campaign("acme", "c").routed == 0
    with pytest.raises(InvalidInput, match="batch_id"):
        store.decide_batch("acme", "c", "", candidates("i", 1, 0))
    assert store.decide_batch("acme", "c", "b0", []) == []


# One field changed per case: (field, value, the violation's field or None when the candidate is valid). The
# store screens whole columns first and judges a batch that fails the screen field by field: both must agree.
ONE_FIELD_CASES = [
    ("instance_id", "   ", "instance_id"),
    ("instance_id", "a\tb", "instance_id"),
    ("instance_id", "x" * 257, "instance_id"),
    ("instance_id", "zero\u200bwidth", None),  # not printable, yet a valid id
    ("instance_id", "caf\u00e9", None),
    ("prompt", "with\x00nul", "prompt"),
    ("prompt", 42, "prompt"),
    ("score", True, "score"),
    ("score", 10**400, "score"),
    ("score", np.float64(0.25), None),
    ("score", 3, None),
    ("cost", 0.0, "cost"),
    ("cost", float("inf"), "cost"),
    ("lm_confidence", 1.5, "lm_confidence"),
    ("lm_confidence", None, None),
    ("expected_correction", float("nan"), "expected_correction"),
    ("lm_label", "C_BETTER", "lm_label"),
    ("signals", {"p": float("nan")}, "signals"),
    ("signals", {"when": np.float64(0.5), "x": None}, None),
    ("metadata", ["not", "an", "object"], "metadata"),
    ("features", {"f": float("inf")}, "features"),
    ("features", {"f": "high"}, "features"),
    ("features", FeatureVector.rows(("a", "a"), np.zeros((1, 2)))[0], "features"),
    ("features", FeatureVector.rows(("a", "b"), np.array([[0.5, np.nan]]))[0], None),
    ("features", {}, None),
]


@pytest.mark.parametrize(
    ("field", "value", "violation"), ONE_FIELD_CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(ONE_FIELD_CASES)]
)
def test_each_field_is_judged_alike_in_a_batch(store, field, value, violation):
    store.create_campaign(spec())
    batch = candidates("i", 4, 0)
    batch[2] = replace(batch[2], **{field: value})
    if violation is None:
        out = store.decide_batch("acme", "c", "b0", batch)
        assert [d.instance_id for d in out] == [c.instance_id for c in batch]
        return
    with pytest.raises(InvalidInput) as err:
        store.decide_batch("acme", "c", "b0", batch)
    assert [v.field for v in err.value.violations] == [f"candidates[2].{violation}"]
    assert store.get_campaign("acme", "c").routed == 0


def test_packed_features_read_back_as_stored(store):
    """Features packed by the router (NaN = unknown, left out) and a plain dict both come back as the
    mapping of their known values; the same list of names is stored once."""
    store.create_campaign(spec(budget_total=10))
    names = ("disagree", "no_verdict", "log_len")
    vectors = FeatureVector.rows(names, np.array([[0.25, 0.0, np.nan], [1e-300, -2.5, 3.0]]))
    sent = [replace(c, features=f) for c, f in zip(candidates("i", 2, 0), vectors)]
    sent.append(replace(candidates("j", 1, 0)[0], features={"no_verdict": 1.0, "disagree": 0.5, "log_len": 2.0}))
    store.decide_batch("acme", "c", "b0", sent)
    store.submit_labels("acme", "c", [HumanLabel(c.instance_id, "ann", "A") for c in sent])
    back = {cand.instance_id: cand.features for cand, _, _ in store.returned_labels("acme", "c")}
    assert back["i0"] == {"disagree": 0.25, "no_verdict": 0.0} and "log_len" not in back["i0"]
    assert dict(back["i1"]) == {"disagree": 1e-300, "no_verdict": -2.5, "log_len": 3.0}
    assert list(back["j0"]) == ["no_verdict", "disagree", "log_len"] and back["j0"]["log_len"] == 2.0
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM feature_sets").scalar() == 2  # two orders of names


@pytest.mark.parametrize("kind", ["count", "cost"])
def test_twenty_batch_stream_spends_within_2_percent(store, kind):
    rng = random.Random(11)
    sizes = [rng.randint(20, 60) for _ in range(20)]
    batches, start = [], 0
    for b, n in enumerate(sizes):
        batches.append(candidates("s", n, 100 + b, start=start, cost_range=(0.5, 3.0)))
        start += n
    units = [1.0 if kind == "count" else c.cost for batch in batches for c in batch]
    total = float(int(0.25 * sum(units))) if kind == "count" else 0.25 * sum(units)
    store.create_campaign(spec(budget_kind=kind, budget_total=total, expected_instances=start))
    spent = 0.0
    for b, batch in enumerate(batches):
        out = store.decide_batch("acme", "c", f"b{b}", batch)
        spent += sum((1.0 if kind == "count" else d.cost) for d in out if d.human)
        campaign = store.get_campaign("acme", "c")
        assert campaign.spent == pytest.approx(spent) and campaign.spent <= total + 1e-9
    assert total * 0.98 <= spent <= total + 1e-9


def test_labels_stored_unchanged_replaced_rejected(store):
    decisions = all_human(store, n=4)
    ids = [d.instance_id for d in decisions]
    store.create_campaign(spec("lm-only", budget_total=0))
    lm = store.decide_batch("acme", "lm-only", "b0", candidates("i", 2, 0))
    assert not any(d.human for d in lm)
    results = store.submit_labels(
        "acme",
        "c",
        [
            HumanLabel(ids[0], "ann", "A", strength=2, rationale="clearer"),
            HumanLabel(ids[1], "ann", "b"),
            HumanLabel("missing", "ann", "A"),
            HumanLabel(ids[2], "ann", "maybe"),
            HumanLabel(ids[2], "", "A"),
            HumanLabel(ids[2], "ann", "tie", strength=1),
            HumanLabel(ids[3], "ann", "A", strength=5),
            HumanLabel(ids[0], "ann", "A", strength=2, rationale="clearer"),  # same again in the same request
        ],
    )
    assert [r.status for r in results] == [
        "stored",
        "stored",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "unchanged",
    ]
    assert [r.index for r in results] == list(range(8))
    assert results[2].error.startswith("labels[2].instance_id")
    assert results[3].error.startswith("labels[3].preference")
    assert results[4].error.startswith("labels[4].annotator")
    assert results[5].error.startswith("labels[5].strength")
    assert results[6].error.startswith("labels[6].strength")
    again = store.submit_labels(
        "acme",
        "c",
        [
            HumanLabel(ids[0], "ann", "A", strength=2, rationale="clearer"),
            HumanLabel(ids[1], "ann", "A"),
            HumanLabel(ids[1], "ann2", "A"),
        ],
    )
    assert [r.status for r in again] == ["unchanged", "replaced", "stored"]
    campaign = store.get_campaign("acme", "c")
    assert campaign.labels_returned == 3  # a replaced label is still one vote
    assert campaign.pairs_pending == 2
    audit = store.submit_labels("acme", "lm-only", [HumanLabel("i0", "ann", "B")])
    assert audit[0].status == "stored" and audit[0].audit
    assert not any(r.audit for r in again)
    rows = {r[0].instance_id: r for r in store.returned_labels("acme", "c")}
    assert sorted(rows) == sorted(ids[:2])
    cand, decision, votes = rows[ids[1]]
    sent = candidates("i", 4, 0)[1]
    assert (cand.prompt, cand.response_a, cand.response_b, cand.signals, cand.features, cand.metadata) == (
        sent.prompt,
        sent.response_a,
        sent.response_b,
        sent.signals,
        sent.features,
        sent.metadata,
    )
    assert cand.lm_label == sent.lm_label and cand.expected_correction == sent.expected_correction
    assert decision.human and [(v.annotator, v.preference) for v in votes] == [("ann", "A"), ("ann2", "A")]
    assert rows[ids[0]][2][0].strength == 2 and rows[ids[0]][2][0].rationale == "clearer"
    assert rows[ids[0]][2][0].labelled_at.tzinfo is not None


def test_delete_label_is_an_undo(store):
    ids = [d.instance_id for d in all_human(store, n=3)]
    store.submit_labels("acme", "c", [HumanLabel(ids[0], "ann", "A")])
    assert store.pending_pairs("acme", "c", "ann", limit=5)[0].instance_id == ids[1]
    assert store.delete_label("acme", "c", ids[0], "ann") is True
    assert store.delete_label("acme", "c", ids[0], "ann") is False
    assert store.delete_label("acme", "c", "missing", "ann") is False
    assert store.get_campaign("acme", "c").labels_returned == 0
    assert [p.instance_id for p in store.pending_pairs("acme", "c", "ann", limit=5)] == ids
    assert store.submit_labels("acme", "c", [HumanLabel(ids[0], "ann", "B")])[0].status == "stored"


def test_pending_pairs_need_votes_and_skip_what_the_annotator_did(store):
    decisions = all_human(store, n=6, votes=2)
    ids = [d.instance_id for d in decisions]
    first = store.pending_pairs("acme", "c", "ann1", limit=3)
    assert [p.instance_id for p in first] == ids[:3]
    assert first[0].votes == 0 and first[0].votes_needed == 2 and first[0].response_a
    store.submit_labels("acme", "c", [HumanLabel(ids[0], "ann1", "A"), HumanLabel(ids[1], "ann1", "A")])
    assert [p.instance_id for p in store.pending_pairs("acme", "c", "ann1", limit=3)] == ids[2:5]
    for_ann2 = store.pending_pairs("acme", "c", "ann2", limit=2)
    assert [(p.instance_id, p.votes) for p in for_ann2] == [(ids[0], 1), (ids[1], 1)]
    store.submit_labels("acme", "c", [HumanLabel(ids[0], "ann2", "B")])
    assert ids[0] not in [p.instance_id for p in store.pending_pairs("acme", "c", "ann3", limit=100)]
    assert store.status("acme", "c").labels_pending == 2 * 6 - 3
    with pytest.raises(InvalidInput, match="limit"):
        store.pending_pairs("acme", "c", "ann1", limit=0)


def test_pending_pairs_page_by_cursor_and_labels_between_pages_skip_nothing(store):
    ids = [d.instance_id for d in all_human(store, n=7)]
    first = store.pending_pairs("acme", "c", "", limit=3)
    assert [p.instance_id for p in first] == ids[:3]
    # a label for a pair of the first page arrives between two pages: an offset would now skip ids[3]
    store.submit_labels("acme", "c", [HumanLabel(ids[1], "ann", "A")])
    second = store.pending_pairs("acme", "c", "", limit=3, after=first[-1].instance_id)
    assert [p.instance_id for p in second] == ids[3:6]
    assert [p.instance_id for p in store.pending_pairs("acme", "c", "", limit=3, after=second[-1].instance_id)] == ids[6:]
    assert store.pending_pairs("acme", "c", "", limit=3, after=ids[-1]) == []
    with pytest.raises(InvalidInput, match="after"):
        store.pending_pairs("acme", "c", "", limit=3, after="not-an-id")


def test_export_trl_majority_ties_and_lm_labels(store):
    store.create_campaign(spec(budget_total=3, votes_per_pair=3, judge="gpt-4"))
    batch = candidates("i", 6, 5)
    batch = [
        replace(c, score=s, lm_label=lab)
        for c, s, lab in zip(
            batch, [0.9, 0.8, 0.7, 0.1, 0.2, 0.3], ["A_BETTER", "A_BETTER", "B_BETTER", "B_MUCH_BETTER", "TIE", None], strict=True
        )
    ]
    decisions = store.decide_batch("acme", "c", "b0", batch)
    assert [d.human for d in decisions] == [True, True, True, False, False, False]
    store.submit_labels(
        "acme",
        "c",
        [
            HumanLabel("i0", "a1", "B"),
            HumanLabel("i0", "a2", "B"),
            HumanLabel("i0", "a3", "A"),  # B wins 2-1
            HumanLabel("i1", "a1", "A"),
            HumanLabel("i1", "a2", "B"),  # level: a flagged tie
            HumanLabel("i3", "a1", "A"),  # audit vote: the LM label stays the row's label
        ],
    )
    rows = {r["id"]: r for r in store.export_rows("acme", "c", "trl")}
    assert sorted(rows) == ["i0", "i1", "i2", "i3", "i4"]  # i5: no label at all
    c = {x.instance_id: x for x in batch}
    assert (rows["i0"]["chosen"], rows["i0"]["rejected"]) == (c["i0"].response_b, c["i0"].response_a)
    assert rows["i0"]["label_source"] == "human" and rows["i0"]["votes"] == 3 and not rows["i0"]["tie"]
    assert rows["i0"]["confidence"] == pytest.approx(2 / 3)
    assert rows["i1"]["tie"] and rows["i1"]["label_source"] == "human" and rows["i1"]["votes"] == 2
    # human-routed, no vote back yet: the LM label, said so
    assert rows["i2"]["label_source"] == "lm" and rows["i2"]["chosen"] == c["i2"].response_b and rows["i2"]["human_routed"]
    assert rows["i3"]["label_source"] == "lm" and rows["i3"]["chosen"] == c["i3"].response_b
    assert rows["i3"]["confidence"] == c["i3"].lm_confidence and rows["i3"]["judge"] == "gpt-4"
    assert rows["i4"]["tie"] and rows["i4"]["label_source"] == "lm"
    assert {r["campaign"] for r in rows.values()} == {"c"} and {r["batch"] for r in rows.values()} == {"b0"}
    assert len({tuple(r) for r in rows.values()}) == 1  # one schema for every row
    pool = {r["id"]: r for r in store.export_rows("acme", "c", "pool")}
    assert sorted(pool) == ["i0", "i1", "i3"]
    assert pool["i0"]["human_votes"] == ["B", "B", "A"] and pool["i0"]["human_label"] == "B"
    assert pool["i1"]["human_label"] == "tie" and pool["i0"]["lm_labels"] == {"gpt-4": "A"}
    assert pool["i3"]["human_routed"] is False
    with pytest.raises(InvalidInput):
        list(store.export_rows("acme", "c", "csv"))


def test_status_agreement_and_corrections(store):
    n = 60
    store.create_campaign(spec(budget_total=40))
    batch = candidates("i", n, 9)
    decisions = store.decide_batch("acme", "c", "b0", batch)
    human_ids = [d.instance_id for d in decisions if d.human]
    lm_ids = [d.instance_id for d in decisions if not d.human]
    assert len(human_ids) == 40
    by_id = {c.instance_id: c for c in batch}
    rng = random.Random(4)
    labels = [HumanLabel(i, "ann", rng.choice("AAB")) for i in human_ids[:30] + lm_ids[:10]]
    store.submit_labels("acme", "c", labels)
    status = store.status("acme", "c")
    assert status.budget_left == 0 and status.labels_pending == 10
    assert status.campaign.labels_returned == 40 and status.campaign.pairs_pending == 10
    # the same numbers computed here from the inputs
    winner = {"A_BETTER": "A", "A_MUCH_BETTER": "A", "B_BETTER": "B", "B_MUCH_BETTER": "B", "TIE": None}
    compared = [(lab.preference, winner[by_id[lab.instance_id].lm_label]) for lab in labels]
    compared = [(h, lm) for h, lm in compared if lm is not None]
    agree = sum(h == lm for h, lm in compared)
    assert status.agreement.estimate == pytest.approx(agree / len(compared))
    p, k = agree / len(compared), len(compared)
    centre = (p + Z95**2 / (2 * k)) / (1 + Z95**2 / k)
    assert status.agreement.low < p < status.agreement.high and (
        status.agreement.low + status.agreement.high
    ) / 2 == pytest.approx(centre)
    audit = [(lab.preference, winner[by_id[lab.instance_id].lm_label]) for lab in labels[30:]]
    audit = [(h, lm) for h, lm in audit if lm is not None]
    assert status.audit_agreement.estimate == pytest.approx(sum(h == lm for h, lm in audit) / len(audit))
    realised = sum(lab.preference != winner[by_id[lab.instance_id].lm_label] for lab in labels[:30])
    assert status.realised_corrections == realised
    promised = [by_id[i].expected_correction for i in human_ids[:30]]
    assert status.expected_known == 30
    assert status.expected_corrections.estimate == pytest.approx(sum(promised))
    half = Z95 * math.sqrt(sum(q * (1 - q) for q in promised))
    assert status.expected_corrections.high == pytest.approx(sum(promised) + half)


def test_status_checks_label_changes_against_the_stored_p_lm_wrong(store):
    """The like-for-like check: changes realised vs sum P(LM wrong), over human-routed pairs with a non-tie
    majority that carry a P(LM wrong); the net expected corrections are not that forecast."""
    store.create_campaign(spec(budget_total=12))
    batch = candidates("i", 12, 5)
    p_wrong = [round(0.1 + 0.07 * k, 3) for k in range(12)]
    batch = [
        replace(c, lm_label="A_BETTER", signals={**c.signals, "p_lm_wrong": p_wrong[k]} if k < 10 else c.signals)
        for k, c in enumerate(batch)
    ]
    assert all(d.human for d in store.decide_batch("acme", "c", "b0", batch))
    votes = ["B", "A", "B", "tie", "A", "B", "A", "A", "B", "A", "B", "B"]  # ids 10, 11: no P(LM wrong)
    store.submit_labels("acme", "c", [HumanLabel(f"i{k}", "ann", v) for k, v in enumerate(votes)])
    status = store.status("acme", "c")
    kept = [k for k in range(10) if votes[k] != "tie"]
    assert status.changes_known == len(kept) == 9
    assert status.realised_changes == sum(votes[k] == "B" for k in kept) == 4
    assert status.expected_changes.estimate == pytest.approx(sum(p_wrong[k] for k in kept))
    half = Z95 * math.sqrt(sum(p_wrong[k] * (1 - p_wrong[k]) for k in kept))
    assert status.expected_changes.low == pytest.approx(sum(p_wrong[k] for k in kept) - half)
    assert status.realised_corrections == 6  # every human pair, with or without P(LM wrong)


def test_decisions_are_deterministic_for_a_batch(tmp_path):
    """Same database state, same batch id: same decisions, exploration picks included (a retry after a
    rolled-back attempt decides what the first attempt would have)."""
    outs = []
    for k in range(2):
        s = SqlCampaignStore.open(f"sqlite:///{tmp_path / f's{k}.db'}", upgrade=True)
        s.create_campaign(spec(budget_total=30, expected_instances=200, exploration_share=0.3))
        outs.append([s.decide_batch("acme", "c", f"b{b}", candidates("i", 40, b, start=40 * b)) for b in range(5)])
        s.close()
    assert outs[0] == outs[1]
    flat = [d for batch in outs[0] for d in batch]
    assert sum(d.exploration for d in flat) >= 3 and sum(d.human for d in flat) == 30


def test_annotator_tokens(store):
    token = store.create_annotator_token("acme", "ann")
    assert len(token) >= 40
    assert store.annotator_for_token(token) == ("acme", "ann")
    assert store.annotator_for_token(token + "x") is None
    other = store.create_annotator_token("globex", "ann")
    assert store.revoke_annotator_tokens("acme", "ann") == 1
    assert store.annotator_for_token(token) is None
    assert store.annotator_for_token(other) == ("globex", "ann")
    with store.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_sha256 FROM annotator_tokens")]
    assert token not in stored and all(len(h) == 64 for h in stored)


def test_label_counts_per_vote(store):
    decisions = all_human(store, n=5, votes=3)
    ids = [d.instance_id for d in decisions]
    store.submit_labels("acme", "c", [HumanLabel(i, f"a{k}", "A") for i in ids[:2] for k in range(3)])
    status = store.status("acme", "c")
    assert status.campaign.labels_returned == 6
    assert status.labels_pending == 3 * 3
    assert Counter(r["votes"] for r in store.export_rows("acme", "c")) == Counter({3: 2, 0: 3})


def test_update_campaign_tops_up_or_cuts_the_budget_and_moves_the_stream_size(store):
    store.create_campaign(spec(budget_total=4, expected_instances=20))
    first = store.decide_batch("acme", "c", "b0", candidates("i", 10, 1))
    spent = store.get_campaign("acme", "c").spent
    assert 0 < spent <= 4
    topped = store.update_campaign("acme", "c", budget_total=12, expected_instances=30)
    assert (topped.spec.budget_total, topped.spec.expected_instances, topped.spent) == (12, 30, spent)
    # The next batch is paced by the new values: the remaining 8 + (4 - spent) over the 20 still expected.
    store.decide_batch("acme", "c", "b1", candidates("j", 10, 2))
    after = store.get_campaign("acme", "c")
    assert after.spent > spent and after.spent <= 12
    # A cut to exactly what is spent stops the spending; the next batch routes everything to the LM.
    cut = store.update_campaign("acme", "c", budget_total=after.spent)
    assert cut.spec.budget_total == after.spent
    assert not any(d.human for d in store.decide_batch("acme", "c", "b2", candidates("k", 5, 3)))
    # Refused, naming the field, and nothing changed: below what is spent / routed, half a label, bad values.
    for kwargs, field in (
        ({"budget_total": after.spent - 1}, "budget.total"),
        ({"budget_total": 12.5}, "budget.total"),
        ({"budget_total": float("nan")}, "budget.total"),
        ({"expected_instances": 24}, "expected_instances"),  # 25 routed
        ({"expected_instances": 0}, "expected_instances"),
    ):
        with pytest.raises(InvalidInput) as err:
            store.update_campaign("acme", "c", **kwargs)
        assert err.value.violations[0].field == field, kwargs
    unchanged = store.update_campaign("acme", "c")
    assert (unchanged.spec.budget_total, unchanged.spec.expected_instances) == (after.spent, 30)
    assert len(first) == 10
    with pytest.raises(NotFound):
        store.update_campaign("globex", "c", budget_total=100)  # another vendor's campaign does not exist for it


def test_a_nul_character_is_refused_by_name_on_both_engines(store):
    """PostgreSQL's text type cannot hold U+0000 (psycopg raised DataError: the whole batch failed as an internal
    error); the store refuses it by field on both engines, and a label's rationale item by item."""
    store.create_campaign(spec(budget_total=3))
    batch = candidates("i", 3, 0)
    with pytest.raises(InvalidInput) as err:
        store.decide_batch("acme", "c", "b0", [replace(batch[0], response_a="bad\x00text"), *batch[1:]])
    assert [v.field for v in err.value.violations] == ["candidates[0].response_a"]
    assert store.get_campaign("acme", "c").routed == 0  # nothing stored
    store.decide_batch("acme", "c", "b0", [replace(batch[0], metadata={"note\x00": "a\x00b"}), *batch[1:]])  # JSON escapes it
    results = store.submit_labels(
        "acme", "c", [HumanLabel("i0", "ann", "A", rationale="why\x00"), HumanLabel("i1", "ann", "B", rationale="fine")]
    )
    assert [r.status for r in results] == ["rejected", "stored"] and "rationale" in results[0].error


def test_annotator_stats_single_out_a_random_voter(store):
    """Three careful annotators agree with the pair's truth 9 times in 10, a fourth votes at random (seeded):
    leave-one-out agreement with the others puts the fourth far below, with intervals that do not overlap."""
    n = 120
    store.create_campaign(spec(budget_total=n, votes_per_pair=4))
    decisions = store.decide_batch("acme", "c", "b0", [replace(c, lm_label="A_BETTER") for c in candidates("i", n, 4)])
    rng = random.Random(11)
    truth = {d.instance_id: rng.choice("AB") for d in decisions}
    labels = []
    for d in decisions:
        for ann in ("careful-1", "careful-2", "careful-3"):
            right = rng.random() < 0.9
            labels.append(
                HumanLabel(d.instance_id, ann, truth[d.instance_id] if right else "AB".replace(truth[d.instance_id], ""))
            )
        labels.append(HumanLabel(d.instance_id, "random", rng.choice("AB")))
    labels.append(HumanLabel(decisions[0].instance_id, "tie-only", "tie"))
    assert {r.status for r in store.submit_labels("acme", "c", labels)} == {"stored"}
    stats = {a.annotator: a for a in store.annotator_stats("acme", "c")}
    assert [a.annotator for a in store.annotator_stats("acme", "c")][-1] == "tie-only"  # most votes first
    assert stats["random"].votes == n and stats["tie-only"].votes == 1
    assert stats["tie-only"].with_others is None and stats["tie-only"].with_lm is None  # a tie compares with nothing
    careful = [stats[f"careful-{k}"].with_others for k in (1, 2, 3)]
    # a careful vote (right 9 in 10) meets a majority of two careful votes and the random one: 0.9 x 0.9 + 0.1 x 0.1
    assert all(c.estimate > 0.72 for c in careful) and stats["random"].with_others.estimate < 0.62
    assert stats["random"].with_others.high < min(c.low for c in careful)
    # with the LM label (always A here): the share of the annotator's A votes
    a_share = sum(lab.preference == "A" for lab in labels if lab.annotator == "random") / n
    assert stats["random"].with_lm.estimate == pytest.approx(a_share)


def test_retract_labels_removes_one_annotators_votes_and_their_pairs_want_votes_again(store):
    ids = [d.instance_id for d in all_human(store, n=6, votes=2)]
    votes = [HumanLabel(i, ann, "A") for i in ids for ann in ("good", "bad")]
    store.submit_labels("acme", "c", votes)
    assert store.status("acme", "c").labels_pending == 0
    assert store.retract_labels("acme", "c", "bad", ids[:2]) == 2  # only those pairs
    assert store.retract_labels("acme", "c", "bad", []) == 0  # an empty list removes nothing
    assert store.retract_labels("acme", "c", "bad") == 4  # the rest of that annotator's labels
    assert store.retract_labels("acme", "c", "bad") == 0  # a retry
    status = store.status("acme", "c")
    assert status.campaign.labels_returned == 6 and status.labels_pending == 6
    assert [p.instance_id for p in store.pending_pairs("acme", "c", "bad", limit=10)] == ids
    assert {a.annotator for a in store.annotator_stats("acme", "c")} == {"good"}
    with pytest.raises(InvalidInput, match="annotator"):
        store.retract_labels("acme", "c", "")
    with pytest.raises(NotFound):
        store.retract_labels("globex", "c", "bad")


def test_a_closed_campaign_routes_no_new_instance_but_replays_and_takes_labels(store):
    store.create_campaign(spec(budget_total=4))
    first = store.decide_batch("acme", "c", "b0", candidates("i", 4, 1))
    closed = store.close_campaign("acme", "c")
    assert closed.closed_at is not None and closed.closed_at.tzinfo is not None
    assert store.close_campaign("acme", "c").closed_at == closed.closed_at  # idempotent: the first time stays
    again = store.decide_batch("acme", "c", "b0", candidates("i", 4, 1))  # a re-sent batch: its stored decisions
    assert [d.human for d in again] == [d.human for d in first] and all(d.replayed for d in again)
    with pytest.raises(NotReady, match="closed"):
        store.decide_batch("acme", "c", "b1", candidates("j", 2, 2))
    assert store.get_campaign("acme", "c").routed == 4
    human = [d.instance_id for d in first if d.human]
    assert store.submit_labels("acme", "c", [HumanLabel(human[0], "ann", "A")])[0].status == "stored"
    assert len(list(store.export_rows("acme", "c"))) == 4
