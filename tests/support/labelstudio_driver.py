"""Plays a Label Studio team against a real server, with ``label-studio-sdk`` (run by the Label Studio
tools venv's python, never the product's: this file imports nothing from hybridpref).

    python labelstudio_driver.py PLAN.json RESULT.json

PLAN: {"base_url", "token", "title", "label_config", "maximum_annotations", "tasks": [...],
       "annotators": [e-mail, ...], "votes": [{"annotator", "instance_id", "rule", "strength",
       "rationale", "cancel"}]}
A vote reads the task AS LABEL STUDIO SERVES IT and decides like a person would: rule "better" picks
the response whose text contains "(better)" (A or B as shown), "tie" picks Tie; strength 1 or 2.
RESULT: {"export": <the project's JSON export>, "users": [{"id", "email"}], "project": id,
         "seconds": {"project", "import", "annotate", "export"}}
"""

from __future__ import annotations

import json
import sys
import time

from label_studio_sdk import LabelStudio

CODES = {("A", 2): "A2", ("A", 1): "A1", ("B", 1): "B1", ("B", 2): "B2"}


def choice_for(data: dict, vote: dict) -> str:
    if vote["rule"] == "tie":
        return "tie"
    side = "A" if "(better)" in data["response_a"] else "B"
    return CODES[(side, vote["strength"])]


def main(plan_path: str, result_path: str) -> int:
    with open(plan_path, encoding="utf-8") as fh:
        plan = json.load(fh)
    ls = LabelStudio(base_url=plan["base_url"], api_key=plan["token"], timeout=120)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    project = ls.projects.create(
        title=plan["title"], label_config=plan["label_config"], maximum_annotations=plan["maximum_annotations"]
    )
    users = {}
    for email in plan["annotators"]:
        user = ls.users.create(email=email, username=email.split("@")[0])
        users[email] = user.id
    seconds["project"] = time.perf_counter() - t

    t = time.perf_counter()
    ls.projects.import_tasks(id=project.id, request=plan["tasks"], return_task_ids=True)
    by_instance = {task.data["instance_id"]: task for task in ls.tasks.list(project=project.id, page_size=1000)}
    seconds["import"] = time.perf_counter() - t

    t = time.perf_counter()
    for vote in plan["votes"]:
        task = by_instance[vote["instance_id"]]
        if vote.get("cancel"):
            ls.annotations.create(id=task.id, result=[], was_cancelled=True, completed_by=users[vote["annotator"]])
            continue
        result = [
            {
                "from_name": "preference",
                "to_name": "prompt",
                "type": "choices",
                "value": {"choices": [choice_for(task.data, vote)]},
            }
        ]
        if vote.get("rationale"):
            result.append(
                {"from_name": "rationale", "to_name": "prompt", "type": "textarea", "value": {"text": [vote["rationale"]]}}
            )
        ls.annotations.create(id=task.id, result=result, completed_by=users[vote["annotator"]])
    seconds["annotate"] = time.perf_counter() - t

    t = time.perf_counter()
    export = json.loads(b"".join(ls.projects.exports.download_sync(id=project.id, export_type="JSON")))
    seconds["export"] = time.perf_counter() - t
    user_list = [{"id": u.id, "email": u.email} for u in ls.users.list()]
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump({"export": export, "users": user_list, "project": project.id, "seconds": seconds}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
