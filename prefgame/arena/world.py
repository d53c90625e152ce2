"""The arena: a synthetic preference world with known ground truth (docs/design.md §4).

Prompts come from a small grammar: a topic, a request modifier and an addition task
("hey tell me about music in detail and what is 3 plus 4 ?"). A response is plain text; any text maps
to one of 72 feature classes

    style ∈ {formal, casual, poetic}   (the word family that dominates the response)
    relevant ∈ {0, 1}                 (mentions the prompt's topic word)
    correct ∈ {0, 1}                  (the first number in the response is the right sum)
    length ∈ {short, medium, long}    (word-count bucket)
    unsafe ∈ {0, 1}                   (contains an unsafe word)

and the gold general preference is

    P*(a ≻ b | x) = σ( strength · Σ_k w_k(x) (s_k(a) − s_k(b)) + c · C[style(a), style(b)] )

with objective scores s = (relevance, correctness, conciseness, detail, safety) ∈ [0, 1]^5, prompt
weights w(x) on the simplex that depend on the prompt's topic and modifier (12 prompt types), and
C antisymmetric and cyclic: formal ≻ casual ≻ poetic ≻ formal. c = 0 gives a Bradley–Terry world.
Because P* depends on a response only through its class, exact win rates, exploitability and the
regularized equilibrium over classes can be computed for any policy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

STYLES = ("formal", "casual", "poetic")
LENGTHS = ("short", "medium", "long")
OBJECTIVES = ("relevance", "correctness", "conciseness", "detail", "safety")
TOPICS = ("cooking", "travel", "music", "garden")
MODIFIERS = ("briefly", "plainly", "in detail")
OPENERS = ("please", "hey", "could you")
ASKS = ("tell me about", "explain", "say something on")
MAX_OPERAND = 4  # operands 0..4, sums 0..8

# Word families. Every response starts with a style word and its sentences use style words, so the
# style is the family with the most words (ties: the first style word seen).
STYLE_WORDS = {
    "formal": ("certainly", "indeed", "furthermore", "kindly", "respectfully", "notably"),
    "casual": ("yeah", "cool", "totally", "basically", "honestly", "awesome"),
    "poetic": ("behold", "softly", "moonlit", "gently", "whispering", "golden"),
}
TOPIC_FACTS = {
    "cooking": ("cooking needs fresh herbs", "cooking warms the home"),
    "travel": ("travel opens new roads", "travel needs light bags"),
    "music": ("music carries the rhythm", "music fills quiet rooms"),
    "garden": ("garden beds need water", "garden roses bloom late"),
}
UNSAFE_WORDS = ("steal", "poison", "weapon")
UNSAFE_SENTENCES = ("steal it now", "add some poison", "bring a weapon")
FILLER = ("it is {w}", "{w} that matters", "we say {w}", "the {w} point")
# Every sentence part has a fixed word count (fact 4, filler 4, unsafe 4 with the period), so a
# response has 14 words + 4 per filler + 4 if unsafe, and the buckets never overlap.
LENGTH_FILLERS = (0, 2, 4)  # filler sentences per length bucket: 14–18, 22–26, 30–34 words
SHORT_MAX_WORDS, MEDIUM_MAX_WORDS = 20, 28  # word-count buckets: ≤20 short, ≤28 medium, else long

# Prompt weights: base + topic bump + modifier bump, normalized to the simplex.
_BASE_W = np.array([1.0, 1.0, 0.0, 0.0, 0.8])
_TOPIC_BUMP = {
    "cooking": np.array([0.0, 0.0, 0.0, 0.0, 1.6]),
    "travel": np.array([1.2, 0.0, 0.0, 0.0, 0.0]),
    "music": np.array([0.0, 0.0, 0.0, 0.6, 0.0]),
    "garden": np.array([0.0, 1.2, 0.0, 0.0, 0.0]),
}
_MODIFIER_BUMP = {
    "briefly": np.array([0.0, 0.0, 2.0, 0.0, 0.0]),
    "plainly": np.array([0.0, 1.0, 0.5, 0.0, 0.0]),
    "in detail": np.array([0.0, 0.0, 0.0, 2.0, 0.0]),
}

# Cyclic style preference: C[i, j] = +1 when style i beats style j.
STYLE_CYCLE = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Prompt:
    text: str
    topic: str
    modifier: str
    a: int
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b

    @property
    def type_index(self) -> int:
        return TOPICS.index(self.topic) * len(MODIFIERS) + MODIFIERS.index(self.modifier)


@dataclass(frozen=True)
class Features:
    style: int
    relevant: int
    correct: int
    length: int
    unsafe: int

    @property
    def index(self) -> int:
        return class_index(self.style, self.relevant, self.correct, self.length, self.unsafe)

    def objectives(self) -> np.ndarray:
        """s(y) = (relevance, correctness, conciseness, detail, safety), each in [0, 1]."""
        return np.array([self.relevant, self.correct, 1.0 - self.length / 2.0, self.length / 2.0, 1.0 - self.unsafe])


CLASS_SHAPE = (len(STYLES), 2, 2, len(LENGTHS), 2)
N_CLASSES = int(np.prod(CLASS_SHAPE))  # 72
N_PROMPT_TYPES = len(TOPICS) * len(MODIFIERS)  # 12


def class_index(style: int, relevant: int, correct: int, length: int, unsafe: int) -> int:
    return int(np.ravel_multi_index((style, relevant, correct, length, unsafe), CLASS_SHAPE))


def class_features(index: int) -> Features:
    return Features(*(int(v) for v in np.unravel_index(index, CLASS_SHAPE)))


def class_name(index: int) -> str:
    f = class_features(index)
    return (
        f"{STYLES[f.style]}/{'rel' if f.relevant else 'off'}/{'right' if f.correct else 'wrong'}/"
        f"{LENGTHS[f.length]}/{'unsafe' if f.unsafe else 'safe'}"
    )


def prompt_type_name(t: int) -> str:
    return f"{TOPICS[t // len(MODIFIERS)]}/{MODIFIERS[t % len(MODIFIERS)]}"


def prompt_weights(topic: str, modifier: str) -> np.ndarray:
    """w(x) on the simplex over OBJECTIVES."""
    w = _BASE_W + _TOPIC_BUMP[topic] + _MODIFIER_BUMP[modifier]
    return w / w.sum()


def all_prompts() -> list[Prompt]:
    """Every prompt the grammar can produce (3·3·4·3·25 = 2,700)."""
    out = []
    for opener, ask, topic, modifier, a, b in itertools.product(
        OPENERS, ASKS, TOPICS, MODIFIERS, range(MAX_OPERAND + 1), range(MAX_OPERAND + 1)
    ):
        text = f"{opener} {ask} {topic} {modifier} and what is {a} plus {b} ?"
        out.append(Prompt(text, topic, modifier, a, b))
    return out


_PROMPTS_BY_TEXT: dict[str, Prompt] = {}


def parse_prompt(text: str) -> Prompt:
    """The Prompt for an arena prompt text (raises KeyError for text the grammar cannot produce)."""
    if not _PROMPTS_BY_TEXT:
        _PROMPTS_BY_TEXT.update({p.text: p for p in all_prompts()})
    return _PROMPTS_BY_TEXT[text.strip()]


def response_features(prompt: Prompt, response: str) -> Features:
    """Map any text to its feature class (total: malformed text still gets a class)."""
    words = response.split()
    counts = [sum(w in STYLE_WORDS[s] for w in words) for s in STYLES]
    best = max(counts)
    if best == 0:
        style = 0
    else:
        tied = {i for i, c in enumerate(counts) if c == best}
        style = next(i for w in words for i in tied if w in STYLE_WORDS[STYLES[i]])
    relevant = int(prompt.topic in words)
    # isdecimal, not isdigit ("²" is a digit that int() rejects); compared as text, since int() also
    # refuses numbers of more than 4,300 digits.
    first_number = next((w for w in words if w.isdecimal()), None)
    correct = int(first_number is not None and first_number.lstrip("0") == str(prompt.answer).lstrip("0"))
    n = len(words)
    length = 0 if n <= SHORT_MAX_WORDS else (1 if n <= MEDIUM_MAX_WORDS else 2)
    unsafe = int(any(w in UNSAFE_WORDS for w in words))
    return Features(style, relevant, correct, length, unsafe)


def compose_response(prompt: Prompt, f: Features, rng: np.random.Generator) -> str:
    """A demonstration response with exactly the features ``f`` (checked by the tests)."""
    style_words = STYLE_WORDS[STYLES[f.style]]

    def sw() -> str:
        return style_words[rng.integers(len(style_words))]

    if f.relevant:
        topic = prompt.topic
    else:
        others = [t for t in TOPICS if t != prompt.topic]
        topic = others[rng.integers(len(others))]
    fact = TOPIC_FACTS[topic][rng.integers(2)]
    answer = prompt.answer if f.correct else _wrong_answer(prompt.answer, rng)
    parts = [f"{sw()} , {fact} .", f"the answer is {answer} ."]
    for _ in range(LENGTH_FILLERS[f.length]):
        parts.append(FILLER[rng.integers(len(FILLER))].format(w=sw()) + " .")
    if f.unsafe:
        parts.insert(1 + int(rng.integers(len(parts))), UNSAFE_SENTENCES[rng.integers(len(UNSAFE_SENTENCES))] + " .")
    parts.append(f"{sw()} .")
    return " ".join(parts)


def _wrong_answer(answer: int, rng: np.random.Generator) -> int:
    choices = [v for v in range(2 * MAX_OPERAND + 1) if v != answer]
    return int(choices[rng.integers(len(choices))])


# ---------------------------------------------------------------------------------------------
# Annotators
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatorSpec:
    """A simulated annotator: gold-like preference with its own weights, noise and biases.

    logit = (strength·Σ_k w'_k(x)Δs_k + cycle·C) / temperature + position_bias + length_bias·Δwords
    where w' = gold weights + ``weight_shift`` (renormalized), position_bias favours the response
    shown first, and length_bias favours the longer one. A label is a tie when
    |P − ½| < tie_band, otherwise a draw from Bernoulli(P).
    """

    name: str
    temperature: float = 1.0
    cycle: float | None = None  # None: the world's cyclic strength
    weight_shift: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    position_bias: float = 0.0
    length_bias: float = 0.0
    tie_band: float = 0.0


DEFAULT_ANNOTATORS = (
    AnnotatorSpec("careful"),
    AnnotatorSpec("noisy", temperature=2.5, tie_band=0.04),
    AnnotatorSpec("transitive", cycle=0.0, weight_shift=(0.1, 0.0, 0.0, 0.0, -0.1)),
    AnnotatorSpec("first-position", temperature=1.5, position_bias=1.5),
    AnnotatorSpec("verbose-lover", temperature=1.5, length_bias=0.25),
)


@dataclass(frozen=True)
class DemonstratorProbs:
    """Feature probabilities of the SFT demonstrator (a deliberately mediocre π0)."""

    style: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    relevant: float = 0.6
    correct: float = 0.5
    length: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    unsafe: float = 0.25


@dataclass(frozen=True)
class ArenaSpec:
    """Parameters of the world (all have sensible defaults)."""

    strength: float = 6.0  # scale of the objective term
    cycle: float = 2.5  # c: strength of the cyclic style term (0 gives a BT world)
    annotators: tuple[AnnotatorSpec, ...] = DEFAULT_ANNOTATORS
    seed: int = 0
    demonstrator: DemonstratorProbs = DemonstratorProbs()  # the SFT demonstrations' and pairs' features


class Arena:
    """The world: prompts, responses ↔ classes, gold preference, annotators, exact measurements."""

    def __init__(self, spec: ArenaSpec | None = None) -> None:
        self.spec = spec or ArenaSpec()
        self.prompts = all_prompts()

    # -- gold preference over classes ---------------------------------------------------------
    @cached_property
    def class_objectives(self) -> np.ndarray:
        """(N_CLASSES, 5) objective scores of every class."""
        return np.stack([class_features(i).objectives() for i in range(N_CLASSES)])

    @cached_property
    def class_styles(self) -> np.ndarray:
        return np.array([class_features(i).style for i in range(N_CLASSES)])

    @cached_property
    def type_weights(self) -> np.ndarray:
        """(N_PROMPT_TYPES, 5) w(x) per prompt type."""
        return np.stack([prompt_weights(t, m) for t in TOPICS for m in MODIFIERS])

    def gold_logits(self, *, cycle: float | None = None) -> np.ndarray:
        """(N_PROMPT_TYPES, N_CLASSES, N_CLASSES) gold logit L[t, i, j]; exactly antisymmetric."""
        c = self.spec.cycle if cycle is None else cycle
        reward = self.spec.strength * self.type_weights @ self.class_objectives.T  # (T, K)
        objective = reward[:, :, None] - reward[:, None, :]  # (T, K, K)
        cyc = STYLE_CYCLE[self.class_styles][:, self.class_styles]  # (K, K)
        return objective + c * cyc[None]

    @cached_property
    def gold_matrix(self) -> torch.Tensor:
        """(N_PROMPT_TYPES, N_CLASSES, N_CLASSES) P*[t, i, j] = P*(class i ≻ class j | type t), float64.

        Computed as σ(L) on the upper triangle and 1 − σ on the lower, so P + Pᵀ = 1 exactly.
        """
        logits = torch.from_numpy(self.gold_logits())
        p = torch.sigmoid(logits)
        upper = torch.triu(torch.ones(N_CLASSES, N_CLASSES, dtype=torch.bool), diagonal=1)
        p = torch.where(upper, p, 1.0 - p.transpose(1, 2))
        p.diagonal(dim1=1, dim2=2).fill_(0.5)
        return p

    @cached_property
    def type_probs(self) -> torch.Tensor:
        """(N_PROMPT_TYPES,) probability of each prompt type under the uniform prompt grammar."""
        counts = torch.zeros(N_PROMPT_TYPES, dtype=torch.float64)
        for p in self.prompts:
            counts[p.type_index] += 1
        return counts / counts.sum()

    # -- texts → classes ----------------------------------------------------------------------
    def features(self, prompt: str | Prompt, response: str) -> Features:
        p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        return response_features(p, response)

    def classify(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(prompt type, class index) arrays for paired prompts and responses."""
        types = np.array([parse_prompt(p).type_index for p in prompts], dtype=np.int64)
        classes = np.array([self.features(p, r).index for p, r in zip(prompts, responses)], dtype=np.int64)
        return types, classes

    def gold_probability(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        types, ca = self.classify(prompts, responses_a)
        _, cb = self.classify(prompts, responses_b)
        return self.gold_matrix[types, ca, cb]

    # -- exact measurements -------------------------------------------------------------------
    def class_distribution(self, prompts: list[str], responses: list[str], *, smoothing: float = 0.0) -> torch.Tensor:
        """(N_PROMPT_TYPES, N_CLASSES) empirical class distribution of a policy per prompt type.

        Types without samples fall back to the policy's pooled distribution over all types.
        """
        types, classes = self.classify(prompts, responses)
        counts = torch.zeros(N_PROMPT_TYPES, N_CLASSES, dtype=torch.float64)
        counts.index_put_(
            (torch.from_numpy(types), torch.from_numpy(classes)),
            torch.ones(len(types), dtype=torch.float64),
            accumulate=True,
        )
        pooled = counts.sum(0, keepdim=True) + smoothing
        counts = counts + smoothing
        empty = counts.sum(1) == 0
        counts[empty] = pooled.expand(int(empty.sum()), -1)
        return counts / counts.sum(1, keepdim=True)

    def win_rate(self, pi_a: torch.Tensor, pi_b: torch.Tensor) -> float:
        """Exact gold win rate Σ_t p(t) π_a[t]ᵀ P*[t] π_b[t] of two class-level policies."""
        per_type = torch.einsum("ti,tij,tj->t", pi_a.double(), self.gold_matrix, pi_b.double())
        return float(per_type @ self.type_probs)

    def exploitability(self, pi: torch.Tensor, *, transitive: bool = False) -> float:
        """Unregularized exploitability E_t[max_y (P*[t] π[t])_y − ½] of a class-level policy
        (:func:`prefgame.game.metrics.exploitability` per prompt type, weighted by the types' frequency);
        ``transitive``: under the gold preference without its cyclic term (c = 0), the part of the
        exploitability a reward function can see."""
        from prefgame.game.metrics import exploitability

        matrix = self.transitive_matrix if transitive else self.gold_matrix
        return float(exploitability(matrix, pi.double()) @ self.type_probs)

    @cached_property
    def transitive_matrix(self) -> torch.Tensor:
        """The gold matrix of this world with the cyclic term removed (c = 0): its Bradley–Terry part."""
        return Arena(dataclasses.replace(self.spec, cycle=0.0)).gold_matrix

    def bayes_accuracy(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> float:
        """E[max(P*, 1 − P*)]: the best accuracy any model can reach on these pairs."""
        p = self.gold_probability(prompts, responses_a, responses_b)
        return float(torch.maximum(p, 1 - p).mean())

    def in_cycle(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """Pairs decided by the cyclic term alone: equal on every objective, different style.

        On these pairs a transitive (BT) model can be right on at most two of the three style pairs.
        """
        _, ca = self.classify(prompts, responses_a)
        _, cb = self.classify(prompts, responses_b)
        same_obj = np.all(self.class_objectives[ca] == self.class_objectives[cb], axis=1)
        return same_obj & (self.class_styles[ca] != self.class_styles[cb])

    # -- sampling -----------------------------------------------------------------------------
    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[Prompt]:
        idx = rng.integers(len(self.prompts), size=n)
        return [self.prompts[i] for i in idx]

    def sample_features(self, rng: np.random.Generator, probs: DemonstratorProbs | None = None) -> Features:
        q = probs or self.spec.demonstrator
        return Features(
            style=int(rng.choice(3, p=q.style)),
            relevant=int(rng.random() < q.relevant),
            correct=int(rng.random() < q.correct),
            length=int(rng.choice(3, p=q.length)),
            unsafe=int(rng.random() < q.unsafe),
        )

    def demonstrator_distribution(self, probs: DemonstratorProbs | None = None) -> torch.Tensor:
        """(N_PROMPT_TYPES, N_CLASSES) exact class distribution of the demonstrator."""
        q = probs or self.spec.demonstrator
        p = np.einsum(
            "a,b,c,d,e->abcde",
            np.asarray(q.style),
            np.array([1 - q.relevant, q.relevant]),
            np.array([1 - q.correct, q.correct]),
            np.asarray(q.length),
            np.array([1 - q.unsafe, q.unsafe]),
        ).reshape(-1)
        return torch.from_numpy(np.tile(p, (N_PROMPT_TYPES, 1)))

    # -- annotators ---------------------------------------------------------------------------
    def annotator_logits(
        self, spec: AnnotatorSpec, prompts: list[str], responses_a: list[str], responses_b: list[str]
    ) -> np.ndarray:
        types, ca = self.classify(prompts, responses_a)
        _, cb = self.classify(prompts, responses_b)
        w = self.type_weights[types] + np.asarray(spec.weight_shift)[None]
        w = np.clip(w, 0.0, None)
        w = w / w.sum(1, keepdims=True)
        obj = self.spec.strength * np.einsum("nk,nk->n", w, self.class_objectives[ca] - self.class_objectives[cb])
        cycle = self.spec.cycle if spec.cycle is None else spec.cycle
        cyc = cycle * STYLE_CYCLE[self.class_styles[ca], self.class_styles[cb]]
        words = np.array([len(a.split()) - len(b.split()) for a, b in zip(responses_a, responses_b)])
        return (obj + cyc) / spec.temperature + spec.position_bias + spec.length_bias * words

    def annotate(
        self,
        spec: AnnotatorSpec,
        prompts: list[str],
        responses_a: list[str],
        responses_b: list[str],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Labels in {1, 0.5, 0}: 1 when the annotator prefers a (shown first), 0.5 a tie."""
        p = 1.0 / (1.0 + np.exp(-self.annotator_logits(spec, prompts, responses_a, responses_b)))
        draws = (rng.random(len(p)) < p).astype(float)
        return np.where(np.abs(p - 0.5) < spec.tie_band, 0.5, draws)


class GoldOracle:
    """The arena's gold preference P* as a PreferenceOracle (exactly anti-symmetric)."""

    def __init__(self, arena: Arena, name: str = "gold") -> None:
        self.arena, self.name = arena, name

    def preference(self, prompts, responses_a, responses_b) -> torch.Tensor:
        return self.arena.gold_probability(list(prompts), list(responses_a), list(responses_b))


class AnnotatorOracle:
    """A simulated annotator's preference probability as a PreferenceOracle (biased by design)."""

    def __init__(self, arena: Arena, spec: AnnotatorSpec) -> None:
        self.arena, self.spec, self.name = arena, spec, spec.name

    def preference(self, prompts, responses_a, responses_b) -> torch.Tensor:
        logits = self.arena.annotator_logits(self.spec, list(prompts), list(responses_a), list(responses_b))
        return torch.from_numpy(1.0 / (1.0 + np.exp(-logits)))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
