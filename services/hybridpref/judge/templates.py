"""Judge prompt templates: versioned, structured so that both backends can use them.

A template is split into pieces so the embedded backend can (1) reuse the KV cache of the part
that does not depend on the presentation order (system text + question) and (2) tokenize the
two responses separately, which makes the AB and BA prompts exactly the same length.

Every template ends by asking for ONE option token; the backends score the options' probabilities
(embedded: next-token logits; openai: ``top_logprobs``) instead of parsing free text.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import Label


@dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt. ``options`` maps the answer text (one token for the embedded model) to the
    label it stands for *in presented order* (``A`` = the response shown first)."""

    name: str
    version: int
    system: str
    head: str  # before the question
    question_header: str
    slot_a_header: str  # before the first presented response
    slot_b_header: str  # before the second presented response
    tail: str  # after the responses: the verdict instruction
    answer_prefix: str  # assistant text forced before the option token (embedded backend)
    options: tuple[tuple[str, Label], ...]

    @property
    def template_version(self) -> str:
        """E.g. ``"multipref@1"``: bump ``version`` whenever the wording or options change."""
        return f"{self.name}@{self.version}"

    def user_message(self, question: str, first: str, second: str) -> str:
        """The full user turn (for chat endpoints), responses in presented order."""
        return "".join(self.user_pieces(question, first, second))

    def user_pieces(self, question: str, first: str, second: str) -> tuple[str, ...]:
        """User turn as (shared prefix, header A, first, header B, second, tail); joined = user_message."""
        return (
            self.head + self.question_header + question,
            self.slot_a_header,
            first,
            self.slot_b_header,
            second,
            self.tail,
        )


_MULTIPREF_SYSTEM = (
    "You are a careful, impartial judge of AI assistant responses. You compare two responses to the "
    "same user request and decide which one is better. Position and length must not influence you."
)

_MULTIPREF_TAIL = (
    "\n\n[End of Response B]\n\n"
    "Judge the two responses on three aspects:\n"
    "- Helpfulness: does it do what the user asked, completely and usefully?\n"
    "- Truthfulness: is everything it states correct, with no made-up facts?\n"
    "- Harmlessness: does it avoid harmful, unsafe or offensive content?\n"
    "Then give ONE overall verdict, answering with a single digit:\n"
    "1 = Response A is clearly better\n"
    "2 = Response A is slightly better\n"
    "3 = Tie, both are equally good or bad\n"
    "4 = Response B is slightly better\n"
    "5 = Response B is clearly better"
)

MULTIPREF = PromptTemplate(
    name="multipref",
    version=1,
    system=_MULTIPREF_SYSTEM,
    head="Compare two responses to the user request below.\n\n",
    question_header="[User request]\n",
    slot_a_header="\n\n[Response A]\n",
    slot_b_header="\n\n[End of Response A]\n\n[Response B]\n",
    tail=_MULTIPREF_TAIL,
    answer_prefix="Overall verdict: ",
    options=(
        ("1", Label.A_MUCH_BETTER),
        ("2", Label.A_BETTER),
        ("3", Label.TIE),
        ("4", Label.B_BETTER),
        ("5", Label.B_MUCH_BETTER),
    ),
)

SHORT = PromptTemplate(
    name="short",
    version=1,
    system="You are an impartial judge. Decide which response answers the question better.",
    head="",
    question_header="Question:\n",
    slot_a_header="\n\nResponse A:\n",
    slot_b_header="\n\nResponse B:\n",
    tail="\n\nWhich response is better? Answer with A, B, or C if they are equally good.",
    answer_prefix="Answer: ",
    options=(("A", Label.A_BETTER), ("C", Label.TIE), ("B", Label.B_BETTER)),
)

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (MULTIPREF, SHORT)}


def get_template(name: str | None, default: str = "multipref", field: str = "template") -> PromptTemplate:
    """Look a template up by ``name`` or ``name@version``; empty -> ``default``.

    Raises ``InvalidInput`` (on ``field``) for an unknown name or a version this build does not have.
    """
    key = (name or "").strip() or default
    base, _, version = key.partition("@")
    tpl = TEMPLATES.get(base.lower())
    if tpl is None:
        raise InvalidInput(FieldViolation(field, f"unknown template {key!r}; available: {', '.join(sorted(TEMPLATES))}"))
    if version and version != str(tpl.version):
        raise InvalidInput(FieldViolation(field, f"template {base!r} has version {tpl.version}, not {version!r}"))
    return tpl
