"""Arena data sets in the formats of the data layer: SFT demonstrations, labeled pairs,
per-objective ratings and battles with annotator ids. Every function is deterministic in its rng."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from prefgame.arena.world import (
    OBJECTIVES,
    Arena,
    DemonstratorProbs,
    Features,
    compose_response,
    prompt_type_name,
)

# Systems that fight the exported battles: the demonstrator and three skewed variants.
SYSTEMS: dict[str, DemonstratorProbs] = {
    "demonstrator": DemonstratorProbs(),
    "accurate": DemonstratorProbs(relevant=0.9, correct=0.9, unsafe=0.05),
    "verbose": DemonstratorProbs(length=(0.05, 0.15, 0.8)),
    "poet": DemonstratorProbs(style=(0.1, 0.1, 0.8), correct=0.4),
}


def sft_corpus(arena: Arena, n: int, rng: np.random.Generator) -> list[dict]:
    """Demonstrations {prompt, response} drawn from the demonstrator's feature distribution."""
    rows = []
    for p in arena.sample_prompts(n, rng):
        rows.append({"prompt": p.text, "response": compose_response(p, arena.sample_features(rng), rng)})
    return rows


def perturb(f: Features, rng: np.random.Generator) -> Features:
    """The same features with one of them changed to a different value (a minimal pair)."""
    name = ("style", "relevant", "correct", "length", "unsafe")[rng.integers(5)]
    size = 3 if name in ("style", "length") else 2
    value = (getattr(f, name) + 1 + int(rng.integers(size - 1))) % size
    return replace(f, **{name: value})


def response_pairs(
    arena: Arena, n: int, rng: np.random.Generator, *, minimal_pair_fraction: float = 0.3
) -> tuple[list[str], list[str], list[str]]:
    """(prompts, responses_a, responses_b): demonstrator responses; a share are minimal pairs."""
    prompts, a, b = [], [], []
    for p in arena.sample_prompts(n, rng):
        fa = arena.sample_features(rng)
        fb = perturb(fa, rng) if rng.random() < minimal_pair_fraction else arena.sample_features(rng)
        prompts.append(p.text)
        a.append(compose_response(p, fa, rng))
        b.append(compose_response(p, fb, rng))
    return prompts, a, b


def labeled_pairs(arena: Arena, n: int, rng: np.random.Generator, *, minimal_pair_fraction: float = 0.3) -> list[dict]:
    """Pairs with the gold soft label: chosen is the response P* prefers, label = P*(chosen ≻ rejected).

    ``subset`` is the prompt type; ``in_cycle`` marks pairs decided by the cyclic term alone.
    """
    prompts, a, b = response_pairs(arena, n, rng, minimal_pair_fraction=minimal_pair_fraction)
    p_ab = arena.gold_probability(prompts, a, b).numpy()
    cyc = arena.in_cycle(prompts, a, b)
    types, _ = arena.classify(prompts, a)
    rows = []
    for i in range(n):
        swap = p_ab[i] < 0.5
        rows.append(
            {
                "prompt": prompts[i],
                "chosen": b[i] if swap else a[i],
                "rejected": a[i] if swap else b[i],
                "label": float(1.0 - p_ab[i] if swap else p_ab[i]),
                "subset": prompt_type_name(int(types[i])),
                "in_cycle": bool(cyc[i]),
            }
        )
    return rows


def rankings(arena: Arena, n: int, rng: np.random.Generator, *, k: int = 4) -> list[dict]:
    """K-way rankings labeled by the gold preference: K demonstrator responses per prompt, each scored by
    its gold leave-one-out win rate s_i = (1/(K−1)) Σ_{j≠i} P*(y_i ≻ y_j) (a ranking needs a score: the
    gold preference is not transitive). ``subset`` is the prompt type."""
    rows = []
    for p in arena.sample_prompts(n, rng):
        ys = [compose_response(p, arena.sample_features(rng), rng) for _ in range(k)]
        i, j = np.triu_indices(k, 1)
        probs = arena.gold_probability([p.text] * len(i), [ys[a] for a in i], [ys[b] for b in j]).numpy()
        matrix = np.full((k, k), 0.0)
        matrix[i, j], matrix[j, i] = probs, 1.0 - probs
        types, _ = arena.classify([p.text], [ys[0]])
        scores = matrix.sum(1) / (k - 1)
        rows.append(
            {"prompt": p.text, "responses": ys, "scores": [float(v) for v in scores],
             "subset": prompt_type_name(int(types[0]))}
        )  # fmt: skip
    return rows


def ratings(arena: Arena, n: int, rng: np.random.Generator, *, noise: float = 0.5, missing: float = 0.1) -> list[dict]:
    """Per-response ratings on a 0–4 scale for each objective: round(4·s_k + noise), some missing."""
    rows = []
    for p in arena.sample_prompts(n, rng):
        f = arena.sample_features(rng)
        response = compose_response(p, f, rng)
        scores = np.clip(np.rint(4 * f.objectives() + rng.normal(0, noise, len(OBJECTIVES))), 0, 4)
        row = {"prompt": p.text, "response": response}
        for name, value in zip(OBJECTIVES, scores):
            row[name] = None if rng.random() < missing else float(value)
        rows.append(row)
    return rows


def battles(arena: Arena, n: int, rng: np.random.Generator) -> list[dict]:
    """Battles between the SYSTEMS judged by each annotator: {prompt, model_a, model_b, winner, judge, …}."""
    names = list(SYSTEMS)
    rows = []
    for p in arena.sample_prompts(n, rng):
        i, j = rng.choice(len(names), size=2, replace=False)
        ra = compose_response(p, arena.sample_features(rng, SYSTEMS[names[i]]), rng)
        rb = compose_response(p, arena.sample_features(rng, SYSTEMS[names[j]]), rng)
        spec = arena.spec.annotators[rng.integers(len(arena.spec.annotators))]
        label = arena.annotate(spec, [p.text], [ra], [rb], rng)[0]
        winner = "tie" if label == 0.5 else ("model_a" if label == 1.0 else "model_b")
        rows.append(
            {
                "prompt": p.text,
                "model_a": names[i],
                "model_b": names[j],
                "winner": winner,
                "judge": spec.name,
                "response_a": ra,
                "response_b": rb,
            }
        )
    return rows
