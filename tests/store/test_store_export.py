"""The campaign's dataset out: JSONL and Parquet files that Hugging Face ``datasets`` loads, and the
pool format read back by the evaluation's pool loader."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from support.store_data import candidates

from hybridpref.offline.pools import load_pool
from hybridpref.store.api import CampaignSpec, HumanLabel
from hybridpref.store.export import parquet_schema, write_export
from hybridpref.store.sql import SqlCampaignStore


@pytest.fixture
def campaign(tmp_path):
    """A campaign of 3 batches of 40 (count budget 30, 2 votes per pair) with seeded human votes on part
    of the human-routed pairs and a few audit votes."""
    store = SqlCampaignStore.open(f"sqlite:///{tmp_path / 'store.db'}", upgrade=True)
    store.create_campaign(
        CampaignSpec(
            "acme", "c", "count", 30, judge="replay:gpt-4", votes_per_pair=2, expected_instances=120, exploration_share=0.2
        )
    )
    decisions = [d for b in range(3) for d in store.decide_batch("acme", "c", f"b{b}", candidates("i", 40, b, start=40 * b))]
    rng = random.Random(0)
    human = [d.instance_id for d in decisions if d.human]
    labels = [HumanLabel(i, f"a{k}", rng.choice(["A", "A", "B", "tie"])) for i in human[:20] for k in range(2)]
    labels += [HumanLabel(d.instance_id, "auditor", "A") for d in decisions if not d.human][:5]
    assert all(r.status == "stored" for r in store.submit_labels("acme", "c", labels))
    yield store
    store.close()


def test_trl_export_loads_with_datasets(campaign, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    rows = list(campaign.export_rows("acme", "c", "trl"))
    assert len(rows) == 120  # every synthetic candidate carries an LM label
    n_jsonl = write_export(iter(rows), tmp_path / "out" / "c.jsonl", "trl")
    n_parquet = write_export(iter(rows), tmp_path / "out" / "c.parquet", "trl")
    assert n_jsonl == n_parquet == 120
    cache = str(tmp_path / "hf-cache")
    from_json = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "c.jsonl"), split="train", cache_dir=cache)
    from_parquet = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "out" / "c.parquet"), split="train", cache_dir=cache
    )
    for ds in (from_json, from_parquet):
        assert ds.num_rows == 120
        assert set(ds.column_names) == set(parquet_schema("trl").names)
        assert ds["id"] == [r["id"] for r in rows]
        assert ds["chosen"] == [r["chosen"] for r in rows]
        assert sum(ds["tie"]) == sum(r["tie"] for r in rows) > 0
        assert sorted(set(ds["label_source"])) == ["human", "lm"]
    assert from_parquet.features["votes"].dtype == "int32"
    trainable = from_parquet.filter(lambda r: not r["tie"])
    assert all(c != r for c, r in zip(trainable["chosen"], trainable["rejected"], strict=True))


def test_trl_chat_export_is_trls_conversational_form(tmp_path, monkeypatch):
    """The prompt as turns (the routed conversation, or one user turn), chosen / rejected one assistant turn
    each, the same labels as ``trl``; JSONL and Parquet load with ``datasets`` with one nested schema."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    store = SqlCampaignStore.open(f"sqlite:///{tmp_path / 'store.db'}", upgrade=True)
    store.create_campaign(CampaignSpec("acme", "chat", "count", 4, judge="gpt-4"))
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7."},
        {"role": "user", "content": "Another one?"},
    ]
    batch = [replace(c, metadata={"messages": turns}) if k % 2 else c for k, c in enumerate(candidates("i", 10, 3))]
    store.decide_batch("acme", "chat", "b0", batch)
    plain = list(store.export_rows("acme", "chat", "trl"))
    chat = list(store.export_rows("acme", "chat", "trl-chat"))
    assert [r["id"] for r in chat] == [r["id"] for r in plain] and len(chat) == 10
    for k, (p, c) in enumerate(zip(plain, chat, strict=True)):
        assert c["prompt"] == (turns if k % 2 else [{"role": "user", "content": p["prompt"]}])
        assert c["chosen"] == [{"role": "assistant", "content": p["chosen"]}]
        assert c["rejected"] == [{"role": "assistant", "content": p["rejected"]}]
        assert {key: v for key, v in c.items() if key not in ("prompt", "chosen", "rejected")} == {
            key: v for key, v in p.items() if key not in ("prompt", "chosen", "rejected")
        }
    cache = str(tmp_path / "hf-cache")
    for suffix, builder in ((".jsonl", "json"), (".parquet", "parquet")):
        path = tmp_path / f"chat{suffix}"
        assert write_export(iter(chat), path, "trl-chat") == 10
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache)
        assert ds["prompt"] == [r["prompt"] for r in chat] and ds["chosen"] == [r["chosen"] for r in chat]
        # TRL's test for the conversational form: each of prompt/chosen/rejected a list of {role, content}
        assert all(
            isinstance(m, dict) and set(m) == {"role", "content"}
            for r in ds
            for key in ("prompt", "chosen", "rejected")
            for m in r[key]
        )
    store.close()


def test_pool_export_reads_back_as_an_evaluation_pool(campaign, tmp_path):
    path = tmp_path / "pool" / "pairs.jsonl"
    n = write_export(campaign.export_rows("acme", "c", "pool"), path, "pool")
    assert n == 25  # 20 human-routed pairs with votes + 5 audit pairs
    pool = load_pool(path)
    assert len(pool) == 25 and not pool.skipped
    assert pool.default_judge == "replay:gpt-4" and pool.judges == ["replay:gpt-4"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    two_votes = [r for r in rows if len(r["human_votes"]) == 2]
    assert len(two_votes) == 20
    # several votes: the first is the "bought" one and the rest the reference (pools.py's rule)
    assert all(k == "other_votes" for k, r in zip(pool.reference_kind, rows, strict=True) if len(r["human_votes"]) == 2)
    signs = {"A": 1, "B": -1, "tie": 0}
    assert pool.human.tolist() == [signs[r["human_votes"][0]] for r in rows]
    write_export(campaign.export_rows("acme", "c", "pool"), tmp_path / "pool.parquet", "pool")
    table = pq.read_table(tmp_path / "pool.parquet")
    assert table.num_rows == 25 and table.schema.equals(parquet_schema("pool"))


def test_empty_export_has_the_schema_and_a_failed_one_leaves_no_file(tmp_path):
    assert write_export(iter(()), tmp_path / "empty.parquet", "trl") == 0
    assert pq.read_table(tmp_path / "empty.parquet").schema.equals(parquet_schema("trl"))

    def broken():
        yield {"id": "x"}
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        write_export(broken(), tmp_path / "half.jsonl", "trl")
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.parquet"]
