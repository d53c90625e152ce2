"""The configuration of ``prefgame selfplay``: policy, oracle, prompts, game, sampling, optimization, measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefgame.arena.job import ArenaConfig
from prefgame.config import param
from prefgame.lora import LoraConfig
from prefgame.oracle import OracleConfig
from prefgame.run import Resume, overwrite_param, resume_param
from prefgame.train.engine import OptimConfig
from prefgame.train.policy import EvalConfig, GenerationConfig, PolicyConfig, PromptsConfig
from prefgame.train.selfplay.registry import ALGORITHMS, load_algorithms, validate

load_algorithms()
Algorithm = Literal[tuple(ALGORITHMS)]  # the registered algorithms: the config's choices and --help


@dataclass
class GameConfig:
    tau: float = param(
        0.1,
        "τ, KL regularization of the game P(π≻π') − τKL(π‖π0) + τKL(π'‖π0) (docs/design.md §1/§3.2): the pull "
        "towards π0 (each algorithm's file says how its update uses it)",
    )
    eta: float = param(
        1.0,
        "η, mirror-descent step of the target update, e.g. π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(ηP(y≻π_t)) "
        "(algorithms whose step is train.lr ignore it; some need ητ ≤ 1)",
    )
    mixture_coef: float = param(
        0.1, "β of nash_md: the opponent is the token-level mixture π^μ ∝ π^{1−β} π0^{β} (docs/design.md §3.3)"
    )
    pair_labels: Literal["sampled", "expected"] = param(
        "expected",
        "pair-based algorithms: expected (the loss uses the oracle's probability itself: the same "
        "expected gradient as a drawn winner, without the label noise; inpo_loss chosen_prob) or sampled "
        "(winner drawn from the probability, the original INPO recipe)",
    )

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.eta <= 0:
            raise ValueError("game.tau and game.eta must be > 0")
        if not 0.0 <= self.mixture_coef <= 1.0:
            raise ValueError("game.mixture_coef must be in [0, 1]")


@dataclass
class SamplingConfig(GenerationConfig):
    backend: Literal["hf", "vllm"] = param(
        "hf", "generation engine for policy samples: hf (KV cache, any device) or vllm (GPU, imported only then)"
    )
    prompts_per_iteration: int = param(32, "prompts drawn per iteration")
    samples_per_prompt: int = param(4, "K responses per prompt (≥ 2)")
    reference_samples_per_prompt: int = param(
        0,
        "pair-based algorithms: M responses per prompt from π0 join each iteration's pairs; the loss then "
        "targets explicit win rates against the K policy samples (inpo_loss win_rate_gap), exact for pairs "
        "from any behaviour, so responses the policy no longer samples stay within the update's reach",
    )
    vllm_gpu_memory_utilization: float = param(0.3, "vllm: share of GPU memory for its engine")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise ValueError("sampling.samples_per_prompt must be ≥ 2 (win rates need other samples)")
        if self.prompts_per_iteration < 1:
            raise ValueError("sampling.prompts_per_iteration must be ≥ 1")
        if self.reference_samples_per_prompt < 0:
            raise ValueError("sampling.reference_samples_per_prompt must be ≥ 0")


@dataclass
class SelfPlayTrainConfig(OptimConfig):
    """``train`` of self-play: the shared optimization settings, iterations and their steps."""

    lr: float = param(2e-4, "AdamW learning rate (the step size of nash_md)")
    iterations: int = param(60, "self-play iterations t = 0 … iterations−1")
    steps_per_iteration: int = param(4, "optimizer steps on each iteration's samples")
    batch_size: int = param(64, "examples (samples, or pairs for pair-based algorithms) per optimizer step")
    logprob_chunk_size: int = param(
        1024,
        "response rows projected to the vocabulary at a time when log-probs are computed (chunked "
        "log-softmax: no (rows × vocabulary) logits in memory); the result does not depend on it",
    )
    length_groups: int = param(
        1,
        "forward passes per micro-batch: its sequences sorted by length and cut into this many groups of equal "
        "size, each padded to its own longest sequence. Less padding (the quickstart's self-play on a CPU: 22% "
        "less CPU time with 4, docs/selfplay.md); the same loss and gradient up to float rounding; 1 on a GPU "
        "or with several processes",
        ge=1,
    )
    reset_optimizer: bool = param(
        False,
        "clear AdamW's moment estimates at the start of every iteration: each iteration fits a new target, "
        "and momentum carried across iterations lags the rotation of the game's cyclic part",
    )
    average_from: int = param(
        -1,
        "-1: the run's policy is the last iterate; k ≥ 0: the uniform average of the policy weights after "
        "iterations k+1 … t is the run's policy (model/, and every measurement after iteration k): tail "
        "averaging, the average iterate of mirror descent, which settles where the last iterate circles the "
        "game's cyclic part. Self-play itself continues from the last iterate",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0 or self.steps_per_iteration < 1:
            raise ValueError("train.iterations must be ≥ 0 and train.steps_per_iteration ≥ 1")
        if self.average_from < -1 or (self.iterations > 0 and self.average_from >= self.iterations):
            raise ValueError(
                f"train.average_from must be -1 (off) or an iteration in 0 … {self.iterations - 1}, "
                f"got {self.average_from}"
            )
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.logprob_chunk_size < 1:
            raise ValueError("train.batch_size, train.micro_batch_size and train.logprob_chunk_size must be ≥ 1")


@dataclass
class SelfPlayEvalConfig(EvalConfig):
    reference_samples_per_prompt: int = param(
        4, "π0 responses per held-out prompt (win-rate opponents; arena: π0's class distribution)"
    )
    reference_prior: float = param(
        10.0, "arena: pseudo-samples of π0's pooled class distribution added to each prompt type's counts"
    )


@dataclass
class SelfPlayConfig:
    output_dir: str = param("runs/selfplay", "where the policy, checkpoints, metrics and log are written")
    resume: Resume = resume_param("the last iteration checkpoint in output_dir")
    overwrite: bool = overwrite_param()
    algorithm: Algorithm = param("nash_md", "self-play algorithm (prefgame/train/selfplay/algorithms/<name>.py)")
    policy: PolicyConfig = param(PolicyConfig, "π0 (initial policy and frozen reference)")
    oracle: OracleConfig = param(OracleConfig, "the preference oracle")
    prompts: PromptsConfig = param(PromptsConfig, "where prompts come from")
    arena: ArenaConfig = param(ArenaConfig, "the arena world (prompts.source=arena or an arena oracle)")
    game: GameConfig = param(GameConfig, "the game and the update rule (τ, η, β)")
    sampling: SamplingConfig = param(SamplingConfig, "response sampling")
    train: SelfPlayTrainConfig = param(SelfPlayTrainConfig, "optimization")
    eval: SelfPlayEvalConfig = param(SelfPlayEvalConfig, "measurements")
    lora: LoraConfig = param(LoraConfig, "LoRA adapters instead of full fine-tuning; π0 is the base (prefgame.lora)")

    def __post_init__(self) -> None:
        validate(self)
