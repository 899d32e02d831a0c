"""The 5-point pairwise scale every hand-off path shares, and the A/B order an annotator is shown.

A choice is made about the two responses *as shown* (left = "A", right = "B"). The store keeps
preferences in the *stored* orientation (A/B as routed), so a choice is always mapped back through the
order it was shown in before it is stored. Label Studio and Argilla show the stored order; the
annotation page shows a per-annotator order (``shown_order``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from hybridpref.store.api import Preference

ShownOrder = Literal["AB", "BA"]  # "AB": stored A on the left; "BA": stored B on the left


@dataclass(frozen=True)
class Choice:
    """One point of the scale: its keyboard key, a short code (form values, Label Studio aliases,
    Argilla label keys), the text shown, and what it means in the shown orientation."""

    key: int  # 1..5, the keyboard shortcut
    code: str  # "A2" | "A1" | "tie" | "B1" | "B2"
    text: str
    preference: Preference  # in the SHOWN orientation
    strength: int | None  # 2 = clearly, 1 = slightly, None for a tie (HumanLabel.strength)


SCALE: tuple[Choice, ...] = (
    Choice(1, "A2", "A clearly better", "A", 2),
    Choice(2, "A1", "A slightly better", "A", 1),
    Choice(3, "tie", "Tie", "tie", None),
    Choice(4, "B1", "B slightly better", "B", 1),
    Choice(5, "B2", "B clearly better", "B", 2),
)
BY_CODE: dict[str, Choice] = {c.code: c for c in SCALE}
BY_TEXT: dict[str, Choice] = {c.text.lower(): c for c in SCALE}


def choice_for(value: str) -> Choice | None:
    """The choice named by a code ("A2") or its text ("A clearly better", any case); None if neither."""
    value = value.strip()
    return BY_CODE.get(value) or BY_TEXT.get(value.lower())


def to_stored(choice: Choice, shown: ShownOrder) -> tuple[Preference, int | None]:
    """(preference, strength) in the stored orientation for a choice made on the ``shown`` order."""
    if shown == "AB" or choice.preference == "tie":
        return choice.preference, choice.strength
    return ("B" if choice.preference == "A" else "A"), choice.strength


def from_stored(preference: Preference, strength: int | None, shown: ShownOrder) -> Choice:
    """Inverse of ``to_stored``: the choice that shows a stored label on the ``shown`` order
    (strength None on a non-tie reads as "slightly")."""
    if preference == "tie":
        return BY_CODE["tie"]
    side = preference if shown == "AB" else ("B" if preference == "A" else "A")
    return BY_CODE[f"{side}{2 if strength == 2 else 1}"]


def shown_order(seed: int, annotator: str, instance_id: str) -> ShownOrder:
    """The order one annotator sees one pair in: deterministic (a reload shows the same order), about
    half of each annotator's pairs swapped, and independent across annotators. SHA-256 of the three
    values, not Python's ``hash`` (salted per process: replicas and restarts must agree)."""
    digest = hashlib.sha256(f"{seed}\x1f{annotator}\x1f{instance_id}".encode()).digest()
    return "BA" if digest[0] & 1 else "AB"
