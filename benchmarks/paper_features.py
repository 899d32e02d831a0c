"""Read a features JSONL in the paper's column layout (allenai/hybrid-preferences) into a tag matrix.

The paper's routing scripts (``scripts/sample_best_subset.py``, ``scripts/get_count_feats.py``)
read one ``features.jsonl`` per dataset with, per line:

========================================  ================================================
column                                    type / meaning
========================================  ================================================
``id``                                    instance id (string)
``prompt``                                prompt text (the scripts rename ``text`` -> ``prompt``)
``completion_a``, ``completion_b``        the two responses
``pref_human``, ``pref_gpt4``             labels, e.g. ``"A-is-slightly-better"``, ``"Tie"``
``bertscore``, ``bertscore_length``,      similarity measures in [0, 1]
``cosine_sim``, ``entity_sim``, ``rouge``
``prompt_len``, ``len_shorter``,          token counts
``len_longer``, ``token_len_diff``
``subject_of_expertise``, ``languages``   lists of strings (multi-label)
``expertise_level``, ``open_endedness``,  one string each
``safety_concern``,
``complexity_of_intents``
``type_of_in_context_material``,          lists of strings; the tag is set when non-empty
``format_constraints``                    (the paper's "open set" features)
========================================  ================================================

Binning follows the project's rules, not the paper's code: similarity values are clipped to
[0, 1] and length columns take their percentile rank in a *fixed reference distribution*
(``hybridpref.routing_model.bins.ReferenceBins``; the paper re-ranked inside each subset), with edges
[0, 1/3], (1/3, 2/3], (2/3, 1]. Analyzer strings map onto the canonical vocabulary with
``vocabulary.canonical_option`` (case-insensitive); unknown strings set no tag and are counted
in ``PaperFeatures.unparsed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from hybridpref.common.vocabulary import (
    ANALYZER_DIMENSIONS,
    BINARY_DIMENSIONS,
    LEXICAL_MEASURES,
    MULTI_LABEL_DIMENSIONS,
    NUM_LEXICAL_TAGS,
    NUM_TAGS,
    TAG_INDEX,
    analyzer_tag,
    canonical_option,
)
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import Label, iter_json_rows

PAPER_TEXT_COLUMNS = ("id", "prompt", "completion_a", "completion_b", "pref_human", "pref_gpt4")
PAPER_ANALYZER_COLUMNS = tuple(ANALYZER_DIMENSIONS)  # the eight analyzer columns
# The paper's MultiPref label strings, both directions.
PAPER_LABELS: dict[str, Label] = {
    "A-is-clearly-better": Label.A_MUCH_BETTER,
    "A-is-slightly-better": Label.A_BETTER,
    "Tie": Label.TIE,
    "B-is-slightly-better": Label.B_BETTER,
    "B-is-clearly-better": Label.B_MUCH_BETTER,
}
LABEL_TO_PAPER: dict[Label, str] = {v: k for k, v in PAPER_LABELS.items()}


@dataclass
class PaperFeatures:
    """A features file as arrays: ``tags`` (n, 90) uint8 in vocabulary order, ``measures``
    (n, 9) float64 raw lexical values (NaN where missing), labels as :class:`Label` values
    (``Label.UNSPECIFIED`` where missing), ``unparsed`` counts of analyzer strings that matched
    no canonical option, per column."""

    ids: list[str]
    tags: np.ndarray
    measures: np.ndarray
    pref_human: np.ndarray
    pref_gpt4: np.ndarray
    unparsed: dict[str, int] = field(default_factory=dict)


def read_paper_features(path: str, reference_bins: Any | None = None) -> PaperFeatures:
    """Read ``path`` (JSONL, paper layout) -> :class:`PaperFeatures`. Errors name the line and column."""
    rows = [row for _lineno, row in iter_json_rows(path)]
    return paper_rows_to_features(rows, reference_bins)


def paper_rows_to_features(rows: Iterable[Mapping[str, Any]], reference_bins: Any | None = None) -> PaperFeatures:
    """Rows (dicts in the paper layout) -> :class:`PaperFeatures`; see the module docstring."""
    from hybridpref.routing_model.bins import ReferenceBins  # numpy-only module; lazy to keep this one light

    rows = list(rows)
    n = len(rows)
    violations = [
        FieldViolation(f"line {i + 1}.id", "missing id") for i, r in enumerate(rows) if not isinstance(r.get("id"), (str, int))
    ]
    if violations:
        raise InvalidInput(violations[:20])
    ids = [str(r["id"]) for r in rows]
    # column-wise: one Python pass per column, one numpy conversion each (row-wise setitem is 10x slower)
    measures = (
        np.column_stack([_numbers([r.get(m) for r in rows]) for m in LEXICAL_MEASURES])
        if n
        else np.zeros((0, len(LEXICAL_MEASURES)))
    )
    pref_h = np.array([_label(r.get("pref_human")) for r in rows], dtype=np.int8)
    pref_g = np.array([_label(r.get("pref_gpt4")) for r in rows], dtype=np.int8)
    unparsed: dict[str, int] = {}
    hit_rows: list[int] = []
    hit_cols: list[int] = []
    for i, row in enumerate(rows):
        for column in _analyzer_columns(row, unparsed):
            hit_rows.append(i)
            hit_cols.append(column)
    tags = np.zeros((n, NUM_TAGS), dtype=np.uint8)
    tags[hit_rows, hit_cols] = 1
    bins = reference_bins or ReferenceBins.default()
    tags[:, :NUM_LEXICAL_TAGS] = bins.tag_bits(measures)
    return PaperFeatures(ids, tags, measures, pref_h, pref_g, unparsed)


def _numbers(values: list[Any]) -> np.ndarray:
    """Floats, NaN for anything that is not a number (None, strings, booleans)."""
    try:
        if not any(isinstance(v, (bool, str)) for v in values):
            return np.array(values, dtype=np.float64)  # None -> NaN
    except (TypeError, ValueError):
        pass
    return np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in values])


def _label(value: Any) -> int:
    if isinstance(value, str) and value in PAPER_LABELS:
        return int(PAPER_LABELS[value])
    return int(Label.UNSPECIFIED)


def _analyzer_columns(row: Mapping[str, Any], unparsed: dict[str, int]) -> list[int]:
    """Tag columns set by one row's analyzer answers."""
    out = []
    for dim, options in ANALYZER_DIMENSIONS.items():
        value = row.get(dim)
        if value is None:
            continue
        if dim in BINARY_DIMENSIONS and dim not in MULTI_LABEL_DIMENSIONS:
            # open-set "present" features: any non-empty answer sets the tag
            if (isinstance(value, list) and len(value) > 0) or (isinstance(value, str) and value.strip()):
                out.append(TAG_INDEX[analyzer_tag(dim, options[0])])
            continue
        for text in value if isinstance(value, list) else [value]:
            column = _option_column(dim, str(text))
            if column < 0:
                unparsed[dim] = unparsed.get(dim, 0) + 1
            else:
                out.append(column)
    return out


@lru_cache(maxsize=4096)
def _option_column(dim: str, text: str) -> int:
    """Tag column of an analyzer answer, -1 when it matches no canonical option (cached: answers repeat)."""
    option = canonical_option(dim, text)
    return -1 if option is None else TAG_INDEX[analyzer_tag(dim, option)]
