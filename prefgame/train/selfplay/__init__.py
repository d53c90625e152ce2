"""LM self-play on the KL-regularized preference game (``prefgame selfplay``, docs/design.md §3.3).

The game is max_π min_π' E_x[P(π ≻ π' | x) − τ KL(π‖π0) + τ KL(π'‖π0)] (τ as in docs/design.md §1 and
§3.2, and in :mod:`prefgame.losses`). Its symmetric equilibrium π* is the aligned policy. Each
iteration t:

1. draws ``prompts_per_iteration`` prompts (a function of (seed, t));
2. samples K = ``samples_per_prompt`` responses per prompt from the current policy π_t (some
   algorithms also sample an opponent, e.g. Nash-MD's token-level mixture π_t^μ), with the KV cache;
3. asks the preference oracle for the K×K matrix of each prompt in one batched, deduplicated call;
4. takes ``steps_per_iteration`` optimizer steps on the algorithm's loss (:mod:`prefgame.losses`).
   Each algorithm is one file of :mod:`prefgame.train.selfplay.algorithms` that registers itself
   (:mod:`~prefgame.train.selfplay.registry`); its docstring gives its update. η (``game.eta``) is the
   mirror-descent step of the target update, τ (``game.tau``) the game's KL coefficient;
5. measures the new policy on held-out prompts (``metrics.jsonl``): win rates under the oracle
   against π0 and against the previous iterate, the Monte Carlo sequence-level KL(π‖π0), and on the
   arena the exact class-level figures (:class:`~prefgame.game.lm_selfplay.ClassGame`): duality gap,
   unregularized exploitability, total-variation distance to π*.

π0 (the reference) is a frozen copy of the initial policy. Resume is exact at iteration granularity:
every random draw comes from a generator seeded by (seed, iteration, purpose), a checkpoint after
each iteration holds the policy, the optimizer state and what the algorithm keeps across iterations,
and a resumed run replays the iterations an uninterrupted run would have run, bit for bit.

Modules: :mod:`.config` (the job's settings), :mod:`.registry` and :mod:`.algorithms` (one file per
algorithm), :mod:`.runtime` (the operations algorithms are written with) and :mod:`.driver` (the
job); held-out measurements are every policy trainer's (:class:`~prefgame.train.policy.PolicyEvaluator`),
the oracle comes from :func:`prefgame.oracle.build_oracle`, vLLM samples from
:mod:`prefgame.game.vllm_sampling`.
"""

from prefgame.game.vllm_sampling import VLLMSampler
from prefgame.oracle import OracleConfig, build_oracle, local_judge_oracle
from prefgame.train.selfplay.config import (
    Algorithm,
    GameConfig,
    PolicyConfig,
    PromptsConfig,
    SamplingConfig,
    SelfPlayConfig,
    SelfPlayEvalConfig,
    SelfPlayTrainConfig,
)
from prefgame.train.selfplay.driver import (
    ARENA_PRESETS,
    run,
    run_selfplay,
    selfplay_config,
    train,
)
from prefgame.train.selfplay.registry import ALGORITHMS, AlgorithmSpec, register
from prefgame.train.selfplay.runtime import POLICY_SAMPLES, STEP_ORDER, Examples, Iterations, SelfPlay

__all__ = [
    "ALGORITHMS",
    "ARENA_PRESETS",
    "Algorithm",
    "AlgorithmSpec",
    "Examples",
    "Iterations",
    "GameConfig",
    "OracleConfig",
    "POLICY_SAMPLES",
    "PolicyConfig",
    "PromptsConfig",
    "STEP_ORDER",
    "SamplingConfig",
    "SelfPlay",
    "SelfPlayConfig",
    "SelfPlayEvalConfig",
    "SelfPlayTrainConfig",
    "VLLMSampler",
    "build_oracle",
    "local_judge_oracle",
    "register",
    "run",
    "run_selfplay",
    "selfplay_config",
    "train",
]
