"""The one canonical tag vocabulary, shared by tagger, predictor and router.

Every tag name is spelled here and nowhere else. A tag vector is a 0/1 row of
length ``len(TAG_NAMES)`` in exactly this order. Change anything here and bump
``VOCABULARY_VERSION``: bundles record the version they were built with and the
predictor refuses a bundle whose vocabulary differs from this one.

Layout (90 tags, as in the paper):

* 9 lexical measures x 3 bins = 27 tags, named ``"<measure>:<bin>"`` with bins
  ``low`` = [0, 1/3], ``mid`` = (1/3, 2/3], ``high`` = (2/3, 1] of the measure's
  reference-normalised value (see ``hybridpref.routing_model.bins``).
* 63 analyzer tags, named ``"<dimension>:<option>"``.
"""

from __future__ import annotations

from typing import Final

VOCABULARY_VERSION: Final = "hybridpref-tags-v1"

LEXICAL_MEASURES: Final[tuple[str, ...]] = (
    "bertscore",
    "bertscore_length",
    "cosine_sim",
    "entity_sim",
    "rouge",
    "prompt_len",
    "len_shorter",
    "len_longer",
    "token_len_diff",
)
# Measures whose raw value is a token count; they are binned by percentile rank
# against a fixed reference distribution (never the batch being tagged).
LENGTH_MEASURES: Final[tuple[str, ...]] = ("prompt_len", "len_shorter", "len_longer", "token_len_diff")
BINS: Final[tuple[str, ...]] = ("low", "mid", "high")

# 46 subjects. One spelling, used by analyzer prompts, classifiers and the router.
SUBJECTS: Final[tuple[str, ...]] = (
    "Anthropology",
    "Economics",
    "Geography",
    "History",
    "Linguistics and language",
    "Literature",
    "Performing arts",
    "Philosophy",
    "Political science",
    "Psychology",
    "Religion",
    "Sociology",
    "Visual arts",
    "Chemistry",
    "Earth sciences",
    "Life sciences",
    "Physics",
    "Space sciences",
    "Computer sciences",
    "Logic",
    "Mathematics",
    "Statistics",
    "Agriculture",
    "Architecture and design",
    "Business",
    "Chemical engineering",
    "Civil engineering",
    "Divinity",
    "Education",
    "Electrical engineering",
    "Environmental studies and forestry",
    "Family and consumer science",
    "Human physical performance and recreation",
    "Journalism, media studies and communication",
    "Law",
    "Library and museum studies",
    "Materials science and engineering",
    "Mechanical engineering",
    "Medicine and health",
    "Military sciences",
    "Public administration",
    "Public policy",
    "Social work",
    "Transportation",
    "Culinary arts",
    "Others",
)

# Analyzer dimensions -> closed option sets. ``multi`` dimensions may take several
# options at once; the others take exactly one. The yes/no dimensions below list
# only their "yes" option: "absent" is the implicit zero, as in the paper.
ANALYZER_DIMENSIONS: Final[dict[str, tuple[str, ...]]] = {
    "subject_of_expertise": SUBJECTS,
    "languages": ("English",),
    "expertise_level": ("general public", "basic domain knowledge", "expert domain knowledge"),
    "open_endedness": ("no", "low", "moderate", "high"),
    "safety_concern": ("safe", "low", "moderate", "high"),
    "complexity_of_intents": ("simple", "moderate", "complex"),
    "type_of_in_context_material": ("present",),
    "format_constraints": ("present",),
}
MULTI_LABEL_DIMENSIONS: Final[frozenset[str]] = frozenset({"subject_of_expertise", "languages"})
# Dimensions that are yes/no: the single option is tagged when the answer is yes.
BINARY_DIMENSIONS: Final[frozenset[str]] = frozenset({"languages", "type_of_in_context_material", "format_constraints"})


def lexical_tag(measure: str, bin_name: str) -> str:
    return f"{measure}:{bin_name}"


def analyzer_tag(dimension: str, option: str) -> str:
    return f"{dimension}:{option}"


TAG_NAMES: Final[tuple[str, ...]] = tuple(
    [lexical_tag(m, b) for m in LEXICAL_MEASURES for b in BINS]
    + [analyzer_tag(d, o) for d, options in ANALYZER_DIMENSIONS.items() for o in options]
)
TAG_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(TAG_NAMES)}
NUM_TAGS: Final = len(TAG_NAMES)
NUM_LEXICAL_TAGS: Final = len(LEXICAL_MEASURES) * len(BINS)

assert len(SUBJECTS) == 46, "the paper's subject list has 46 entries"
assert NUM_TAGS == 90, "27 lexical + 63 analyzer tags"


def tag_index(name: str) -> int:
    """Index of ``name`` in the vocabulary; raises ``KeyError`` naming close matches."""
    try:
        return TAG_INDEX[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, TAG_NAMES, n=3)
        raise KeyError(f"unknown tag {name!r}; did you mean one of {close}?") from None


def canonical_option(dimension: str, text: str) -> str | None:
    """Map free text (an LM answer, a user's spelling) onto the dimension's canonical option.

    Case and surrounding whitespace/punctuation are ignored. Returns ``None`` when
    nothing matches: callers must report "unparsed", never invent a tag.
    """
    options = ANALYZER_DIMENSIONS[dimension]
    cleaned = text.strip().strip(".\"'`*").strip().casefold()
    for option in options:
        if option.casefold() == cleaned:
            return option
    return None
