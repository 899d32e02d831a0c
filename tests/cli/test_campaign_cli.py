"""The campaign commands as a vendor runs them: separate `hybridpref` processes that share the local SQLite
store (the default file under the user's data directory, here under a temporary XDG_DATA_HOME), and the
same commands against a running router (`--router`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from hybridpref.server.settings import Settings
from hybridpref_client.core.instances import read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"


def hybridpref(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridpref.cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    out = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDPREF_")}
    # The default store file lives under $XDG_DATA_HOME/hybridpref/; the embedded stack loads in seconds.
    out.update(XDG_DATA_HOME=str(home / "data"), HYBRIDPREF_TAGGER_PROFILE="fast", HYBRIDPREF_JUDGE_REPLAY_KEY="gpt4")
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_loop_across_cli_processes_on_the_default_store(env, tmp_path):
    sample_rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    first = write_jsonl(tmp_path / "batch1.jsonl", sample_rows[:25])
    second = write_jsonl(tmp_path / "batch2.jsonl", sample_rows[25:])
    made = hybridpref(
        "campaign", "create", "june", "--budget", "count:10", "--expected-instances", "40", "--judge", "gpt4", env=env
    )
    assert made.returncode == 0, made.stderr
    assert (Path(env["XDG_DATA_HOME"]) / "hybridpref" / "hybridpref.db").exists()
    again = hybridpref("campaign", "create", "june", "--budget", "count:3", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr

    routed = hybridpref(
        "route",
        "--campaign",
        "june",
        "--batch",
        "day-1",
        "--input",
        str(first),
        "--output",
        str(tmp_path / "d1.jsonl"),
        "--judge-backend",
        "replay",
        env=env,
    )
    assert routed.returncode == 0, routed.stderr[-3000:]
    decisions = [json.loads(line) for line in (tmp_path / "d1.jsonl").read_text().splitlines()]
    assert len(decisions) == 25 and not any(d["replayed"] for d in decisions)
    human = [d["id"] for d in decisions if d["route"] == "HUMAN"]
    assert 0 < len(human) < 10

    routed = hybridpref(
        "route",
        "--campaign",
        "june",
        "--batch",
        "day-2",
        "--input",
        str(second),
        "--output",
        str(tmp_path / "d2.jsonl"),
        "--judge-backend",
        "replay",
        env=env,
    )
    assert routed.returncode == 0, routed.stderr[-3000:]
    decisions += [json.loads(line) for line in (tmp_path / "d2.jsonl").read_text().splitlines()]
    human = [d["id"] for d in decisions if d["route"] == "HUMAN"]
    assert len(human) == 10  # the announced stream ended: the campaign lands on its total

    # Labels: a malformed file is refused whole, by line and field, before anything is sent.
    truth = {r["id"]: r["human_label"] for r in sample_rows}
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"id": human[0], "label": "A", "annotator": "ann"}, {"id": human[1], "label": "C", "annotator": "ann"}, "{not json"],
    )
    refused = hybridpref("labels", "submit", "--campaign", "june", "--input", str(bad), env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith("error:") and ":3" in refused.stderr
    bad = write_jsonl(
        tmp_path / "bad2.jsonl",
        [{"id": human[0], "label": "A", "annotator": "ann"}, {"id": human[1], "label": "C", "annotator": "ann", "strength": 5}],
    )
    refused = hybridpref("labels", "submit", "--campaign", "june", "--input", str(bad), env=env)
    assert refused.returncode == 2
    assert "error: line 2.label:" in refused.stderr and "error: line 2.strength:" in refused.stderr
    rows = [{"id": i, "label": truth[i] if truth[i] in ("A", "B") else "tie", "annotator": "ann"} for i in human]
    rows.insert(3, {"id": "not-routed", "label": "A", "annotator": "ann"})
    labels = write_jsonl(tmp_path / "labels.jsonl", rows)
    sent = hybridpref("labels", "submit", "--campaign", "june", "--input", str(labels), env=env)
    assert sent.returncode == 2  # one rejection; the rest is stored
    assert "error: line 4.id: no routed instance 'not-routed'" in sent.stderr
    assert "10 stored" in sent.stderr and "1 rejected" in sent.stderr
    resent = hybridpref("labels", "submit", "--campaign", "june", "--input", str(labels), env=env)
    assert "0 stored" in resent.stderr and "10 unchanged" in resent.stderr

    status = hybridpref("campaign", "status", "june", "--json", env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["routed"], data["human_routed"], data["budget_spent"], data["budget_left"]) == (40, 10, 10.0, 0.0)
    assert data["labels_returned"] == 10 and data["labels_pending"] == 0
    assert data["agreement"] is None or 0 <= data["agreement"]["low"] <= data["agreement"]["high"] <= 1
    assert [(a["annotator"], a["votes"]) for a in data["annotators"]] == [("ann", 10)]
    table = hybridpref("campaign", "status", "june", env=env)
    assert table.returncode == 0 and "judge-human agreement" in table.stdout and "annotators (1 of 1" in table.stdout

    out = tmp_path / "june.parquet"
    exported = hybridpref("campaign", "export", "june", "--format", "trl", "--output", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows == 40 and set(table.column("batch").to_pylist()) == {"day-1", "day-2"}
    sources = dict(zip(table.column("id").to_pylist(), table.column("label_source").to_pylist()))
    assert {i for i, s in sources.items() if s == "human"} == set(human)
    chat = tmp_path / "june-chat.parquet"
    assert hybridpref("campaign", "export", "june", "--format", "trl-chat", "--output", str(chat), env=env).returncode == 0
    turns = pq.read_table(chat)
    assert turns.column("id").to_pylist() == table.column("id").to_pylist()
    assert [c[0]["content"] for c in turns.column("chosen").to_pylist()] == table.column("chosen").to_pylist()
    assert all(p[-1]["role"] == "user" for p in turns.column("prompt").to_pylist())
    pool = tmp_path / "june-pool.jsonl"
    assert hybridpref("campaign", "export", "june", "--format", "pool", "--output", str(pool), env=env).returncode == 0
    # The pool export reads back as a pool (hybridpref evaluate's reader).
    from hybridpref.offline.pools import load_pool

    loaded = load_pool(pool)
    assert len(loaded) == 10 and "gpt4" in loaded.judges and not loaded.skipped

    listed = hybridpref("campaign", "list", "--json", env=env)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["june"]
    migrated = hybridpref("store", "migrate", env=env)
    assert migrated.returncode == 0 and "already at revision" in migrated.stderr
    missing = hybridpref("campaign", "status", "july", env=env)
    assert missing.returncode == 1 and "no campaign 'july'" in missing.stderr


def test_cli_mistakes_name_the_flag(env, tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    bad = hybridpref("campaign", "create", "x", "--budget", "fraction:0.2", "--db", db, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --budget:")
    bad = hybridpref("campaign", "create", "x", "--budget", "count:5", "--strategy", "simulated", "--db", db, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --strategy:")
    bad = hybridpref("route", "--campaign", "x", "--budget", "0.3", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --budget: not with --campaign")
    bad = hybridpref("campaign", "export", "x", "--format", "trl", "--output", str(tmp_path / "x.csv"), "--db", db, env=env)
    assert bad.returncode == 2 and "--output" in bad.stderr


@pytest.fixture(scope="module")
def router(background_loop, tmp_path_factory):
    from hybridpref.cli.stack import start_embedded_stack

    db = tmp_path_factory.mktemp("router-store") / "router.db"
    settings = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        router={"db_url": str(db), "backend_check_s": 2.0},
    )
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running, db
    background_loop.run(running.stop(0.5))


def test_the_same_commands_against_a_running_router(router, env, tmp_path):
    stack, db = router
    address = stack.router_address
    made = hybridpref(
        "campaign",
        "create",
        "remote",
        "--budget",
        "cost:6",
        "--judge",
        "gpt4",
        "--strategy",
        "judge_doubt",
        "--router",
        address,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    routed = hybridpref(
        "route",
        "--campaign",
        "remote",
        "--input",
        str(SAMPLE),
        "--output",
        str(tmp_path / "d.jsonl"),
        "--router",
        address,
        env=env,
    )
    assert routed.returncode == 0, routed.stderr[-3000:]
    decisions = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    spent = sum(d["human_cost"] for d in decisions if d["route"] == "HUMAN")
    assert 0 < spent <= 6 + 1e-9
    human = [d["id"] for d in decisions if d["route"] == "HUMAN"]
    labels = write_jsonl(tmp_path / "l.jsonl", [{"id": i, "label": "B", "annotator": "r", "strength": 1} for i in human])
    sent = hybridpref("labels", "submit", "--campaign", "remote", "--input", str(labels), "--router", address, env=env)
    assert sent.returncode == 0 and f"{len(human)} stored" in sent.stderr
    status = json.loads(hybridpref("campaign", "status", "remote", "--json", "--router", address, env=env).stdout)
    assert status["budget_kind"] == "cost" and status["budget_spent"] == pytest.approx(spent)
    assert status["labels_returned"] == len(human)
    out = tmp_path / "remote.jsonl"
    assert (
        hybridpref(
            "campaign", "export", "remote", "--format", "trl", "--output", str(out), "--router", address, env=env
        ).returncode
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(read_jsonl(str(SAMPLE)))
    assert {r["id"] for r in rows if r["label_source"] == "human"} == set(human)
    # The router's store is the file it was given; the local default store never saw this campaign.
    local = hybridpref("campaign", "status", "remote", "--db", str(db), env=env)
    assert local.returncode == 0
    missing = hybridpref("campaign", "status", "remote", "--router", address, "--vendor", "x", env=env)
    assert missing.returncode == 2 and "--vendor" in missing.stderr


def test_every_documented_campaign_command_parses():
    """The commands docs/campaigns.md and the README show a vendor are ones the CLI accepts, as written."""
    import re
    import shlex

    from hybridpref.cli.main import build_parser

    commands = []
    for doc in (ROOT / "docs" / "campaigns.md", ROOT / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("hybridpref ") and re.search(r"\b(campaign|labels|store)\b|--campaign", line):
                    commands.append(shlex.split(line)[1:])
    assert len(commands) >= 12
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_annotation_hand_off_through_a_router(router, env, tmp_path):
    """A vendor outside the cluster has the router's address and an API key, never the database: the Label
    Studio export and the import of its labels go through CampaignService (ListPendingPairs, SubmitLabels)."""
    stack, db = router
    address = stack.router_address
    made = hybridpref("campaign", "create", "handoff", "--budget", "count:8", "--votes", "2", "--router", address, env=env)
    assert made.returncode == 0, made.stderr
    routed = hybridpref(
        "route",
        "--campaign",
        "handoff",
        "--input",
        str(SAMPLE),
        "--output",
        str(tmp_path / "d.jsonl"),
        "--router",
        address,
        env=env,
    )
    assert routed.returncode == 0, routed.stderr[-3000:]
    human = [d["id"] for d in map(json.loads, (tmp_path / "d.jsonl").read_text().splitlines()) if d["route"] == "HUMAN"]
    assert len(human) == 8
    tasks_path = tmp_path / "tasks.json"
    export = ("campaign", "export", "handoff", "--format", "label-studio", "--output", str(tasks_path), "--router", address)
    exported = hybridpref(*export, env=env)
    assert exported.returncode == 0, exported.stderr
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    assert [t["data"]["instance_id"] for t in tasks] == human  # routing order
    assert "maximum annotations to 2" in exported.stderr
    # Label Studio's export after two users labelled the first three tasks (the choices' codes, as in its UI)
    for k, task in enumerate(tasks):
        task["annotations"] = (
            [
                {
                    "completed_by": user,
                    "result": [{"from_name": "preference", "type": "choices", "value": {"choices": [code]}}],
                    "was_cancelled": False,
                    "updated_at": "2026-12-06T10:00:00Z",
                }
                for user, code in ((1, "A2"), (2, "B1"))
            ]
            if k < 3
            else []
        )
    ls_export = tmp_path / "ls-export.json"
    ls_export.write_text(json.dumps(tasks), encoding="utf-8")
    imported = hybridpref(
        "labels", "import", str(ls_export), "--campaign", "handoff", "--from", "label-studio", "--router", address, env=env
    )
    assert imported.returncode == 0, imported.stderr
    assert "6 stored" in imported.stderr
    again = hybridpref(
        "labels", "import", str(ls_export), "--campaign", "handoff", "--from", "label-studio", "--router", address, env=env
    )
    assert again.returncode == 0 and "6 unchanged" in again.stderr  # idempotent through the router too
    # Stored under the tool's name, in the router's own database.
    from hybridpref.store.sql import SqlCampaignStore

    store = SqlCampaignStore.open(f"sqlite:///{db}")
    try:
        sources = {v.source for _, _, votes in store.returned_labels("default", "handoff") for v in votes}
    finally:
        store.close()
    assert sources == {"label-studio"}
    # Now only the pairs that still need votes go out again.
    assert hybridpref(*export, env=env).returncode == 0
    assert [t["data"]["instance_id"] for t in json.loads(tasks_path.read_text(encoding="utf-8"))] == human[3:]


def test_campaign_update_from_the_command_line(env, tmp_path):
    db = f"sqlite:///{tmp_path / 'u.db'}"
    assert hybridpref("campaign", "create", "grow", "--budget", "count:5", "--db", db, env=env).returncode == 0
    grown = hybridpref("campaign", "update", "grow", "--budget", "count:50", "--expected-instances", "400", "--db", db, env=env)
    assert grown.returncode == 0, grown.stderr
    assert "50 labels" in grown.stdout and "expecting 400 instances" in grown.stdout
    status = json.loads(hybridpref("campaign", "status", "grow", "--json", "--db", db, env=env).stdout)
    assert (status["budget_total"], status["expected_instances"]) == (50, 400)
    wrong = hybridpref("campaign", "update", "grow", "--budget", "cost:9", "--db", db, env=env)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: --budget:") and "count budget" in wrong.stderr
    nothing = hybridpref("campaign", "update", "grow", "--db", db, env=env)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    closed = hybridpref("campaign", "close", "grow", "--db", db, env=env)
    assert closed.returncode == 0 and "routes no new instance" in closed.stdout
    listed = [json.loads(line) for line in hybridpref("campaign", "list", "--json", "--db", db, env=env).stdout.splitlines()]
    assert [c["closed_at"] is not None for c in listed if c["name"] == "grow"] == [True]
    retract = hybridpref("labels", "retract", "--campaign", "grow", "--annotator", "nobody", "--db", db, env=env)
    assert retract.returncode == 0 and "retracted 0 label(s) of 'nobody'" in retract.stderr
    missing = hybridpref("labels", "retract", "--campaign", "absent", "--annotator", "x", "--db", db, env=env)
    assert missing.returncode == 1 and "absent" in missing.stderr
