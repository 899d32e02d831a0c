"""Core instance types: label mapping, validation, JSONL errors that name line and field."""

from __future__ import annotations

import json

import pytest

from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, canonical_option, tag_index
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import (
    Label,
    PreferenceInstance,
    instance_from_row,
    instance_to_row,
    parse_label,
    read_jsonl,
    validate_instances,
)


def inst(i="x", a="A text", b="B text", prompt="p"):
    return PreferenceInstance(id=i, prompt=prompt, response_a=a, response_b=b)


def test_label_mapping_and_swap():
    assert parse_label("A") is Label.A_BETTER and parse_label("b") is Label.B_BETTER
    assert parse_label("tie_inconsistent") is Label.TIE and parse_label(None) is None
    assert parse_label("B_MUCH_BETTER") is Label.B_MUCH_BETTER
    assert Label.A_MUCH_BETTER.swapped() is Label.B_MUCH_BETTER and Label.TIE.swapped() is Label.TIE
    assert Label.A_BETTER.winner == "A" and Label.B_MUCH_BETTER.winner == "B" and Label.TIE.winner is None
    with pytest.raises(ValueError, match="unknown label"):
        parse_label("maybe")


def test_validation_collects_every_violation():
    batch = [inst("a"), inst("a"), inst("", a="  "), inst("c", b="")]
    with pytest.raises(InvalidInput) as err:
        validate_instances(batch, max_batch=3)
    fields = {v.field for v in err.value.violations}
    assert fields == {"instances", "instances[1].id", "instances[2].id", "instances[2].response_a", "instances[3].response_b"}


def test_jsonl_errors_name_line_and_field(tmp_path):
    path = tmp_path / "in.jsonl"
    good = {"id": "1", "prompt": "p", "response_a": "a", "response_b": "b", "human_label": "A"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "id": "2", "human_label": "C"}) + "\n")
    with pytest.raises(InvalidInput) as err:
        read_jsonl(str(path))
    assert [v.field for v in err.value.violations] == ["line 3.human_label"]
    path.write_text("{not json\n")
    with pytest.raises(InvalidInput, match=r"in.jsonl:1: not valid JSON"):
        read_jsonl(str(path))


def test_row_round_trip_keeps_labels_and_turns():
    row = {
        "id": "m",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "response_a": "a",
        "response_b": "b",
        "lm_labels": {"gpt4": "tie"},
        "human_cost": 2.5,
    }
    parsed = instance_from_row(row)
    assert parsed.prompt_text == "user: hi\n\nassistant: yo"
    again = instance_from_row(instance_to_row(parsed))
    assert again == parsed


def test_vocabulary_is_canonical():
    assert NUM_TAGS == 90 and len(set(TAG_NAMES)) == 90
    assert TAG_NAMES[tag_index("subject_of_expertise:Journalism, media studies and communication")].startswith("subject")
    assert canonical_option("safety_concern", " Moderate. ") == "moderate"
    assert canonical_option("safety_concern", "very high") is None
    with pytest.raises(KeyError, match="did you mean"):
        tag_index("bertscore:middle")


def test_instance_fields_are_read_and_shifted_in_one_place():
    from hybridpref.common.fields import instance_index, rename_instance, shift_instances
    from hybridpref_client.core.errors import FieldViolation

    assert instance_index("instances[12].response_a") == 12 and instance_index("config.budget") is None
    assert instance_index("x.instances[3]") is None  # only a leading instance path
    shifted = shift_instances([FieldViolation("instances[3].lm_labels['a[1]']", "bad"), FieldViolation("instances", "empty")], 64)
    assert [v.field for v in shifted] == ["instances[67].lm_labels['a[1]']", "instances"]
    lines = [2, 5]
    to_line = lambda i: f"line {lines[i]}" if i < len(lines) else None  # noqa: E731
    assert rename_instance("instances[1].id", to_line) == "line 5.id"
    assert rename_instance("instances[7].id", to_line) == "instances[7].id"
