"""The store's Alembic migrations on both engines: from an empty database, from the previous revision
with rows in place, and the migrated schema equal to the models."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from support.postgres import postgres_server, store_url  # noqa: F401  (fixtures)

from hybridpref.store.api import HumanLabel
from hybridpref.store.engine import create_store_engine, current_revision, downgrade, head_revision, migrate
from hybridpref.store.models import Base
from hybridpref.store.sql import SqlCampaignStore
from hybridpref_client.core.errors import NotReady


def test_from_empty_to_head_matches_the_models(store_url):  # noqa: F811
    assert migrate(store_url) == head_revision() == "0004"
    assert migrate(store_url) == "0004"  # again: nothing to do
    engine = create_store_engine(store_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"campaigns", "decisions", "labels", "annotator_tokens", "feature_sets", "alembic_version"} <= tables
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()


def test_upgrade_from_0001_keeps_rows(store_url):  # noqa: F811
    assert migrate(store_url, "0001") == "0001"
    engine = create_store_engine(store_url)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:  # rows as revision 0001's code wrote them
        conn.execute(
            text(
                "INSERT INTO campaigns (vendor, name, budget_kind, budget_total, strategy, judge, votes_per_pair, "
                "expected_instances, exploration_share, created_at, spent, routed, human_routed) VALUES "
                "('acme', 'old', 'count', 5, '', '', 1, NULL, 0, :now, 1, 2, 1)"
            ),
            {"now": now},
        )
        cid = conn.execute(text("SELECT id FROM campaigns WHERE name = 'old'")).scalar()
        for k, human in enumerate((True, False)):
            conn.execute(
                text(
                    "INSERT INTO decisions (campaign_id, instance_id, batch_id, prompt, response_a, response_b, score, "
                    "cost, human, exploration, threshold, lm_label, lm_confidence, expected_correction, signals, "
                    "features, meta, model_version, bundle_version, created_at) VALUES (:cid, :iid, 'b0', 'p', 'ra', "
                    "'rb', 0.5, 1, :human, :f, NULL, 'A_BETTER', 0.9, 0.2, '{}', '{}', '{}', '', '', :now)"
                ),
                {"cid": cid, "iid": f"i{k}", "human": human, "f": False, "now": now},
            )
        did = conn.execute(text("SELECT id FROM decisions WHERE instance_id = 'i0'")).scalar()
        conn.execute(
            text(
                "INSERT INTO labels (campaign_id, decision_id, annotator, preference, strength, rationale, labelled_at, "
                "source, audit, updated_at) VALUES (:cid, :did, 'ann', 'B', 2, 'why', :now, 'api', :f, :now)"
            ),
            {"cid": cid, "did": did, "now": now, "f": False},
        )
    with pytest.raises(NotReady, match="store migrate"):
        SqlCampaignStore.open(store_url)
    engine.dispose()
    assert migrate(store_url) == "0004"
    store = SqlCampaignStore.open(store_url)
    campaign = store.get_campaign("acme", "old")
    assert (campaign.spent, campaign.routed, campaign.human_routed, campaign.labels_returned) == (1, 2, 1, 1)
    assert campaign.created_at == now
    rows = {r["id"]: r for r in store.export_rows("acme", "old")}
    assert rows["i0"]["chosen"] == "rb" and rows["i0"]["label_source"] == "human"
    assert rows["i1"]["chosen"] == "ra" and rows["i1"]["label_source"] == "lm"
    # the new revision's table works, and the old campaign goes on
    token = store.create_annotator_token("acme", "ann")
    assert store.annotator_for_token(token) == ("acme", "ann")
    assert (
        store.submit_labels("acme", "old", [HumanLabel("i0", "ann", "B", strength=2, rationale="why")])[0].status == "unchanged"
    )
    store.close()


def test_open_refuses_an_unmigrated_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(NotReady, match="revision none"):
        SqlCampaignStore.open(url)
    store = SqlCampaignStore.open(url, upgrade=True)
    assert current_revision(store.engine) == head_revision()
    store.close()


def test_upgrade_from_0002_keeps_campaigns_open(store_url):  # noqa: F811
    """Revision 0003 adds campaigns.closed_at: a campaign of 0002 stays open, routes on, and can be closed."""
    from support.store_data import candidates

    assert migrate(store_url, "0002") == "0002"
    engine = create_store_engine(store_url)
    now = datetime(2026, 12, 2, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO campaigns (vendor, name, budget_kind, budget_total, strategy, judge, votes_per_pair, "
                "expected_instances, exploration_share, created_at, spent, routed, human_routed) VALUES "
                "('acme', 'older', 'count', 3, '', '', 1, NULL, 0, :now, 0, 0, 0)"
            ),
            {"now": now},
        )
    engine.dispose()
    assert migrate(store_url) == "0004"
    store = SqlCampaignStore.open(store_url)
    try:
        assert store.get_campaign("acme", "older").closed_at is None
        assert len(store.decide_batch("acme", "older", "b0", candidates("i", 3, 0))) == 3
        assert store.close_campaign("acme", "older").closed_at is not None
    finally:
        store.close()


def test_upgrade_from_0003_reads_json_features_and_packs_new_ones(store_url):  # noqa: F811
    """Revision 0004 packs the correction features: a decision stored as JSON before it reads back the same,
    new decisions are packed (one feature_sets row per list of names), and a downgrade writes them back as
    JSON objects."""
    from support.store_data import candidates

    assert migrate(store_url, "0003") == "0003"
    engine = create_store_engine(store_url)
    now = datetime(2026, 12, 3, tzinfo=UTC)
    with engine.begin() as conn:  # a decision as revision 0003's code wrote it
        conn.execute(
            text(
                "INSERT INTO campaigns (vendor, name, budget_kind, budget_total, strategy, judge, votes_per_pair, "
                "expected_instances, exploration_share, created_at, spent, routed, human_routed) VALUES "
                "('acme', 'c', 'count', 10, '', '', 1, NULL, 0, :now, 1, 1, 1)"
            ),
            {"now": now},
        )
        cid = conn.execute(text("SELECT id FROM campaigns WHERE name = 'c'")).scalar()
        conn.execute(
            text(
                "INSERT INTO decisions (campaign_id, instance_id, batch_id, prompt, response_a, response_b, score, "
                "cost, human, exploration, threshold, lm_label, lm_confidence, expected_correction, signals, "
                "features, meta, model_version, bundle_version, created_at) VALUES (:cid, 'old', 'b0', 'p', 'ra', "
                "'rb', 0.5, 1, :t, :f, NULL, 'A_BETTER', 0.9, 0.2, '{}', :features, '{}', '', '', :now)"
            ),
            {"cid": cid, "t": True, "f": False, "now": now, "features": '{"disagree": 0.25, "no_verdict": 0.0}'},
        )
    engine.dispose()
    assert migrate(store_url) == "0004"
    store = SqlCampaignStore.open(store_url)
    try:
        sent = candidates("new", 3, 0)
        store.decide_batch("acme", "c", "b1", sent)
        store.submit_labels("acme", "c", [HumanLabel(i, "ann", "A") for i in ("old", "new0", "new1", "new2")])
        back = {cand.instance_id: cand for cand, _, _ in store.returned_labels("acme", "c")}
        assert dict(back["old"].features) == {"disagree": 0.25, "no_verdict": 0.0}
        assert [dict(back[c.instance_id].features) for c in sent] == [dict(c.features) for c in sent]
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM feature_sets")).scalar() == 1
            packed = conn.execute(text("SELECT count(*) FROM decisions WHERE feature_values IS NOT NULL")).scalar()
            assert packed == 3
    finally:
        store.close()
    assert downgrade(store_url, "0003") == "0003"
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT instance_id, features FROM decisions")).all())
        as_json = {k: v if isinstance(v, dict) else json.loads(v) for k, v in rows.items()}
        assert as_json["old"] == {"disagree": 0.25, "no_verdict": 0.0}
        assert [as_json[c.instance_id] for c in sent] == [dict(c.features) for c in sent]
    finally:
        engine.dispose()
