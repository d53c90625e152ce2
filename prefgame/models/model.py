"""Preference models as preference oracles: a backbone, one head per ensemble member, save and load.

:class:`PreferenceModel` implements :class:`~prefgame.oracle.PreferenceOracle`:
``preference(prompts, a, b)`` returns P(a ≻ b | x) = σ(s(a, b)) in float64, with the score s
exactly anti-symmetric (``s(b, a) == -s(a, b)`` and ``s(a, a) == 0`` bit for bit), so
P(a≻b) + P(b≻a) = 1 and P(a≻a) = ½ to float64 precision. Every call passes each distinct token
sequence through the backbone once (:meth:`PreferenceModel.embedded_blocks`), so pairs that share
responses share their passes: the K(K−1)/2 pairs of K responses to a prompt (what self-play's matrix
builder asks) cost K passes, and one for the prompt when the head reads it, for every kind that reads
responses one at a time (bt, gpm, gated); the pairwise form reads both responses at once, two passes
per pair. ``preference_matrix(prompt, responses)`` gives the K×K matrix: one matrix product for GPM,
a difference of rewards for BT/gated, the pairs for the pairwise form.

What differs between kinds is read from the kind registry (:mod:`prefgame.models.kinds`): how a head
is built, whether the kind is a reward, its fast K×K matrix, its training loss and views.

Ensembles (K independently seeded heads on one backbone) combine pessimistically:

- reward kinds (bt, gated): r = pessimistic_score(r_1..r_K) per response (min, or mean − c·std),
  s = r_a − r_b;
- general kinds (gpm, pairwise): s = sign(m) · max(|m| − c·sd, 0) ("mean_std"), or the member score
  of smallest magnitude when all members agree on the sign and 0 otherwise ("min") — both shrink
  the preference toward ½ where members disagree, and both keep s exactly anti-symmetric (a
  per-pair min of s itself would not be). :func:`combine_scores` computes both with
  ``pessimistic_score`` on the member scores turned to one side, and turns the result back.

A saved model is a folder: ``model_config.yaml`` (the model section of the training config),
``preference_model.json`` (kind, objectives, where the backbone is), ``heads.safetensors``, and a
``backbone/`` folder when the backbone was trained or newly built (a frozen pretrained backbone is
referenced by its path or hub name instead of copied).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from prefgame.config import config_to_yaml, load_config, param
from prefgame.errors import DataError, PrefgameError
from prefgame.lora import save_pretrained
from prefgame.losses import pessimistic_score
from prefgame.models.backbone import BackboneConfig, TextEncoder, build_encoder
from prefgame.models.kinds import KINDS, KindSpec, kind_names, kind_spec, load_kinds
from prefgame.run import atomic_dir, untie_shared
from prefgame.weights import load_safetensors, read_json

load_kinds()
Kind = Literal[tuple(KINDS)]  # the registered kinds: the config's choices and --help
FORMAT_VERSION = 1


@dataclass
class HeadConfig:
    hidden_size: int = param(0, "head MLP width (0: a linear head, the usual choice on a big backbone)")
    num_layers: int = param(1, "head MLP hidden layers (when hidden_size > 0)")
    prompt_input: bool = param(
        False, "the head reads [h_{x,y}, h_x]: the prompt's own vector next to the response's (bt, gpm, gated)"
    )
    standardize: bool = param(
        True, "frozen backbone: standardize head inputs per feature with training-set mean and std"
    )


@dataclass
class GPMConfig:
    blocks: int = param(4, "k: number of 2×2 skew-symmetric blocks; preference vectors have 2k dimensions")
    prompt_gate: bool = param(True, "eigenvalues λ(x) depend on the prompt through a softmax gate")
    normalize: bool = param(False, "scale preference vectors to unit norm")
    temperature: float = param(1.0, "τ in P = σ(v_aᵀ R v_b / τ)")

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.temperature <= 0:
            raise ValueError("gpm.blocks must be ≥ 1 and gpm.temperature > 0")


@dataclass
class GatedConfig:
    objectives: list[str] = param([], "rating columns used as objectives (empty: every rating column)")
    verbosity_objective: str = param(
        "", "objective treated as verbosity for debiasing (empty: no debiasing; arena: detail)"
    )
    debias_objectives: list[str] = param([], "objectives debiased against verbosity (empty: all others)")
    debias_tolerance: float = param(0.03, "debias until |corr(r'_i, r_verbosity)| ≤ this")
    gate_temperature: float = param(1.0, "T in g(x) = softmax(MLP(h_x)/T)")
    scale_init: float = param(1.0, "initial scale of the final reward")
    learn_scale: bool = param(True, "learn the reward scale with the gate")
    stage1: Literal["ridge", "sgd"] = param(
        "ridge", "stage-1 fit: closed-form ridge on frozen vectors, or gradient descent (regression loss)"
    )
    ridge_l2: float = param(1e-3, "ridge penalty relative to the mean diagonal of the Gram matrix")
    stage1_steps: int = param(300, "sgd stage 1: optimizer steps on the ratings")
    stage1_lr: float = param(0.0, "sgd stage 1: peak learning rate (0: train.lr)")
    stage1_batch_size: int = param(0, "sgd stage 1: ratings per optimizer step (0: train.batch_size)")
    regression_hidden: int = param(
        0, "stage-1 regression: 0 linear (ridge or sgd); > 0 an MLP of this width (sgd only)"
    )

    def __post_init__(self) -> None:
        if self.gate_temperature <= 0 or self.scale_init <= 0 or self.ridge_l2 < 0:
            raise ValueError("gated.gate_temperature, gated.scale_init must be > 0 and ridge_l2 ≥ 0")
        if self.regression_hidden > 0 and self.stage1 == "ridge":
            raise ValueError("gated.regression_hidden > 0 (an MLP) needs gated.stage1=sgd")


@dataclass
class EnsembleConfig:
    size: int = param(1, "independently seeded heads on one backbone (frozen backbone for size > 1)")
    mode: Literal["min", "mean_std"] = param("min", "pessimistic combination of the members")
    c: float = param(1.0, "c in mean − c·std (mode mean_std)")

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("ensemble.size must be ≥ 1")


@dataclass
class PMModelConfig:
    kind: Kind = param("bt", ", ".join(f"{n} ({s.help})" if s.help else n for n, s in KINDS.items()))
    backbone: BackboneConfig = param(BackboneConfig, "the text encoder")
    head: HeadConfig = param(HeadConfig, "head MLP")
    gpm: GPMConfig = param(GPMConfig, "general preference embedding form (kind gpm)")
    gated: GatedConfig = param(GatedConfig, "multi-objective gated reward (kind gated)")
    ensemble: EnsembleConfig = param(EnsembleConfig, "ensemble of heads")


def build_head(cfg: PMModelConfig, in_dim: int, *, objectives: Sequence[str] = (), verbosity_index: int = -1):
    """One head of kind ``cfg.kind`` (initialized from the current torch RNG)."""
    return kind_spec(cfg.kind).build_head(cfg, in_dim, objectives, verbosity_index)


def combine_scores(scores: Tensor, mode: str, c: float) -> Tensor:
    """Pessimistic, exactly anti-symmetric combination of member pair scores (K, N) → (N,).

    :func:`pessimistic_score` of the members' scores turned to one side, turned back: for "mean_std"
    the side of their mean m, sign(m) · max(|m| − c·sd, 0) (clipped at 0: no preference); for "min"
    the magnitudes, the smallest with the members' sign when they all have the same sign, 0 otherwise.
    """
    if scores.shape[0] == 1:
        return scores[0]
    if mode == "mean_std":
        side = torch.sign(scores.mean(0))
        return side * torch.clamp(pessimistic_score(side * scores, mode=mode, c=c), min=0.0)
    if mode == "min":
        side = torch.sign(scores[0])
        agree = (torch.sign(scores) == side).all(0)
        smallest = pessimistic_score(scores.abs(), mode=mode, c=c)
        return torch.where(agree, side * smallest, torch.zeros_like(smallest))
    raise ValueError(f"mode must be 'min' or 'mean_std', got {mode!r}")


@dataclass
class ModelInfo:
    """What is saved next to the weights besides the config."""

    kind: str
    objectives: list[str] = field(default_factory=list)
    verbosity_index: int = -1
    backbone_path: str = ""  # "backbone" (inside the folder) or the original name/path


class PreferenceModel(nn.Module):
    """Backbone + K heads; a :class:`~prefgame.oracle.PreferenceOracle`."""

    def __init__(
        self,
        encoder: TextEncoder,
        heads: Sequence[nn.Module],
        cfg: PMModelConfig,
        *,
        info: ModelInfo | None = None,
        name: str = "",
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)
        self.cfg = cfg
        self.info = info or ModelInfo(cfg.kind)
        self.name = name or f"pm-{cfg.kind}"
        self.batch_size = batch_size

    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def spec(self) -> KindSpec:
        """The kind's record in the registry (:mod:`prefgame.models.kinds`)."""
        return kind_spec(self.cfg.kind)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.heads[0].views)

    @property
    def has_reward(self) -> bool:
        """Whether the model has a scalar reward r(x, y) (:meth:`reward`): the reward kinds (bt, gated)."""
        return self.spec.reward

    # -- sequences and vectors ----------------------------------------------------------------
    def view_sequences(
        self, views: Sequence[str], prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
    ) -> dict[str, list[list[int]]]:
        """Token sequences of each view for aligned (prompt, a, b) rows."""
        enc = self.encoder
        enc.prefetch(prompts, [*a, *b])
        build = {
            "a": lambda x, ya, yb: enc.response_ids(x, ya),
            "b": lambda x, ya, yb: enc.response_ids(x, yb),
            "x": lambda x, ya, yb: enc.prompt_ids(x),
            "ab": lambda x, ya, yb: enc.joint_ids(x, ya, yb),
            "ba": lambda x, ya, yb: enc.joint_ids(x, yb, ya),
        }
        return {v: [build[v](x, ya, yb) for x, ya, yb in zip(prompts, a, b)] for v in views}

    def embed_views(self, sequences: dict[str, list[list[int]]]) -> dict[str, Tensor]:
        """One backbone pass over the sequences of every view (with gradients when training)."""
        names = list(sequences)
        flat = [s for v in names for s in sequences[v]]
        device = next(self.encoder.parameters()).device
        batch = {k: t.to(device) for k, t in self.encoder.collate(flat).items()}
        h = self.encoder(**batch)  # (V·B, H)
        return dict(zip(names, h.split([len(sequences[v]) for v in names])))

    # distinct sequences a block of rows embeds together (their float32 vectors are held on the CPU at once)
    block_sequences = 8192

    @torch.no_grad()
    def embedded_blocks(
        self, views: Sequence[str], prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
    ) -> Iterator[tuple[slice, Tensor, dict[str, Tensor]]]:
        """Frozen vectors of aligned (prompt, a, b) rows, a block of rows at a time: (the block's rows,
        the vectors (U, H) float32 of its U distinct sequences, view → (rows,) index into them).

        Each distinct sequence of a block passes the backbone once: (x, y) is view "a" of one pair and
        "b" of another, x is the "x" view of all its pairs, and a K×K request names every response
        K − 1 times, so K responses to a prompt cost K passes (and one for the prompt when the head
        reads it) however many pairs ask about them. A block takes rows 16 × ``batch_size`` at a time
        until it holds ``block_sequences`` distinct sequences.
        """
        n, step, start = len(prompts), 16 * self.batch_size, 0
        while start < n:
            index: dict[tuple[int, ...], int] = {}
            unique: list[list[int]] = []
            where: dict[str, list[int]] = {v: [] for v in views}
            end = start
            while end < n and len(unique) < self.block_sequences:
                stop = min(end + step, n)
                seqs = self.view_sequences(views, prompts[end:stop], a[end:stop], b[end:stop])
                for v in views:
                    for s in seqs[v]:
                        j = index.setdefault(tuple(s), len(unique))
                        if j == len(unique):
                            unique.append(s)
                        where[v].append(j)
                end = stop
            # the backbone's batches from the set of sequences, not their order: (a, b) and (b, a) get the same bits
            order = sorted(range(len(unique)), key=lambda i: (len(unique[i]), unique[i]))
            vectors = torch.empty(len(unique), self.encoder.hidden_size)
            vectors[order] = self.encoder.embed([unique[i] for i in order], batch_size=self.batch_size * 4)
            yield slice(start, end), vectors, {v: torch.tensor(w, dtype=torch.long) for v, w in where.items()}
            start = end

    @torch.no_grad()
    def embed(self, views: Sequence[str], prompts, a, b) -> dict[str, Tensor]:
        """Frozen vectors of each view, (N, H) float32, every distinct sequence computed once
        (:meth:`embedded_blocks`)."""
        parts: dict[str, list[Tensor]] = {v: [] for v in views}
        for _, vectors, where in self.embedded_blocks(views, list(prompts), list(a), list(b)):
            for v in views:
                parts[v].append(vectors[where[v]])
        return {v: torch.cat(p) if p else torch.zeros(0, self.encoder.hidden_size) for v, p in parts.items()}

    # -- scores -------------------------------------------------------------------------------
    def _head_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        p = next(self.heads.parameters(), None)
        if p is None:
            p = next(self.heads.buffers())
        return p.dtype, p.device

    def _batches(self, views: Sequence[str], prompts, a, b) -> Iterator[dict[str, Tensor]]:
        """The view vectors of ``batch_size`` rows at a time (:meth:`embedded_blocks`), on the heads'
        device and in their dtype."""
        dtype, device = self._head_dtype_device()
        for rows, vectors, where in self.embedded_blocks(views, list(prompts), list(a), list(b)):
            for start in range(0, rows.stop - rows.start, self.batch_size):
                batch = {v: vectors[w[start : start + self.batch_size]] for v, w in where.items()}
                yield {v: h.to(device=device, dtype=dtype) for v, h in batch.items()}

    @torch.no_grad()
    def scores_from_vectors(self, emb: dict[str, Tensor]) -> Tensor:
        """Combined pair scores (N,) from view vectors."""
        dtype, device = self._head_dtype_device()
        emb = {k: v.to(device=device, dtype=dtype) for k, v in emb.items()}
        if self.spec.reward:
            ra = self._combine_rewards([h.reward(emb["a"], emb.get("x")) for h in self.heads])
            rb = self._combine_rewards([h.reward(emb["b"], emb.get("x")) for h in self.heads])
            return ra - rb
        member = torch.stack([h(emb)["score"] for h in self.heads])  # (K, N)
        return combine_scores(member, self.cfg.ensemble.mode, self.cfg.ensemble.c)

    @torch.no_grad()
    def member_preferences(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> Tensor:
        """Each ensemble member's P_k(a_i ≻ b_i | x_i) = σ(s_k), (K, N) float64, uncombined: reward kinds
        s_k = r_k(a) − r_k(b), general kinds the member's pair score (the input of
        :func:`prefgame.pessimism.ensemble_disagreement`)."""
        was_training = self.training
        self.eval()
        out = []
        for emb in self._batches(self.views, list(prompts), list(responses_a), list(responses_b)):
            if self.spec.reward:
                s = [h.reward(emb["a"], emb.get("x")) - h.reward(emb["b"], emb.get("x")) for h in self.heads]
            else:
                s = [h(emb)["score"] for h in self.heads]
            out.append(torch.stack(s).float().cpu())
        self.train(was_training)
        scores = torch.cat(out, dim=1) if out else torch.zeros(len(self.heads), 0)
        return torch.sigmoid(scores.double())

    def _combine_rewards(self, rewards: list[Tensor]) -> Tensor:
        if len(rewards) == 1:
            return rewards[0]
        return pessimistic_score(torch.stack(rewards), mode=self.cfg.ensemble.mode, c=self.cfg.ensemble.c)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Tensor:
        """Anti-symmetric pair scores s(a, b) (N,), float32, on CPU."""
        was_training = self.training
        self.eval()
        batches = self._batches(self.views, prompts, responses_a, responses_b)
        out = [self.scores_from_vectors(emb).float().cpu() for emb in batches]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Tensor:
        """P(a_i ≻ b_i | x_i) = σ(s_i), (N,) float64."""
        prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
        return torch.sigmoid(self.score(prompts, responses_a, responses_b).double())

    @torch.no_grad()
    def reward(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """r(x, y) (N,) for reward kinds (bt, gated); pessimistic over an ensemble."""
        if not self.spec.reward:
            raise PrefgameError(f"a '{self.kind}' model has no scalar reward; use preference()")
        prompts, responses = list(prompts), list(responses)
        views = ("a", "x") if "x" in self.views else ("a",)
        out = [
            self._combine_rewards([h.reward(e["a"], e.get("x")) for h in self.heads]).float().cpu()
            for e in self._batches(views, prompts, responses, responses)
        ]
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def preference_matrix(self, prompt: str, responses: Sequence[str]) -> Tensor:
        """M[i, j] = P(y_i ≻ y_j | x), (K, K) float64, exactly anti-symmetric.

        A reward: K passes and the differences of the (pessimistic) rewards; a kind with a
        ``score_matrix`` (gpm): K passes and each member's matrix, combined; otherwise the
        K(K−1)/2 pairs (:func:`prefgame.oracle.preference_matrix`).
        """
        responses = list(responses)
        k = len(responses)
        spec = self.spec
        if spec.reward:
            r = self.reward([prompt] * k, responses)
            s = r[:, None] - r[None, :]
        elif spec.score_matrix is not None:
            views = ("a", "x") if "x" in self.views else ("a",)
            emb = self.embed(views, [prompt] * k, responses, responses)
            dtype, device = self._head_dtype_device()
            h_y = emb["a"].to(device=device, dtype=dtype)
            h_x = emb["x"][:1].to(device=device, dtype=dtype) if "x" in emb else None
            member = [spec.score_matrix(head, h_y, h_x) for head in self.heads]
            s = combine_scores(torch.stack(member), self.cfg.ensemble.mode, self.cfg.ensemble.c).cpu()
        else:
            from prefgame.oracle import preference_matrix

            return preference_matrix(self, prompt, responses)
        return torch.sigmoid(s.double())

    @torch.no_grad()
    def gating_weights(self, prompts: Sequence[str]) -> Tensor:
        """Gated kind: g(x) (N, k) on the simplex (mean over ensemble members); columns follow
        ``info.objectives``."""
        if not self.spec.ratings:
            gated = " and ".join(kind_names(ratings=True))
            raise PrefgameError(f"gating weights exist for the {gated} kind only, not '{self.kind}'")
        prompts = list(prompts)
        out = []
        dtype, device = self._head_dtype_device()
        for start in range(0, len(prompts), self.batch_size):
            sl = prompts[start : start + self.batch_size]
            h_x = self.embed(("x",), sl, sl, sl)["x"].to(device=device, dtype=dtype)
            out.append(torch.stack([h.gating_weights(h_x) for h in self.heads]).mean(0).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.info.objectives))


# -- save / load -----------------------------------------------------------------------------------


def save_preference_model(
    model: PreferenceModel,
    path: str | Path,
    *,
    save_backbone: bool,
    weights: tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None] = (None, None),
) -> Path:
    """Write the model folder atomically (see the module docstring). ``weights``: the complete tensors of
    the backbone and of the heads to write instead of their own state dicts (each None: its own), for
    modules whose parameters are shards (the trainer gathers them under FSDP)."""
    from safetensors.torch import save_file

    path = Path(path)
    info = ModelInfo(**{**model.info.__dict__})
    with atomic_dir(path) as tmp:
        if save_backbone:  # with LoRA adapters: merged, and the adapters in backbone/adapter
            save_pretrained(model.encoder.model, tmp / "backbone", state_dict=weights[0])
            model.encoder.tokenizer.save_pretrained(str(tmp / "backbone"))
            info.backbone_path = "backbone"
        else:
            src = model.cfg.backbone.name_or_path
            info.backbone_path = str(Path(src).resolve()) if Path(src).exists() else src
        heads = model.heads.state_dict() if weights[1] is None else weights[1]
        tensors = {k: v.detach().contiguous().cpu() for k, v in heads.items()}
        save_file(untie_shared(tensors), str(tmp / "heads.safetensors"))
        (tmp / "model_config.yaml").write_text(config_to_yaml(model.cfg))
        meta = {"format": FORMAT_VERSION, **info.__dict__}
        (tmp / "preference_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_preference_model(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    backbone_dtype: Callable[[str], torch.dtype] | None = None,
) -> PreferenceModel:
    """Restore a saved preference model (a training output dir or its ``model/`` folder) as an oracle;
    its backbone in the dtype the saved config names, or in ``backbone_dtype(that name)`` (a trainer
    passes :meth:`prefgame.train.precision.Precision.frozen_dtype`)."""
    path = Path(path)
    if (path / "model" / "preference_model.json").exists():
        path = path / "model"
    meta_file = path / "preference_model.json"
    if not meta_file.exists():
        raise PrefgameError(
            f"{path}: not a preference model folder (no preference_model.json); "
            "give the output_dir of 'prefgame train-pm' or its model/ folder"
        )
    fix = "the preference model folder is damaged: train it again with 'prefgame train-pm' or copy it again"
    meta = read_json(meta_file, fix)
    try:
        meta.pop("format", None)
        info = ModelInfo(**meta)
    except (AttributeError, TypeError):
        raise DataError(f"{meta_file} does not describe a preference model (kind, objectives, ...): {fix}") from None
    cfg = load_config(PMModelConfig, path / "model_config.yaml")
    backbone = cfg.backbone
    if info.backbone_path == "backbone":
        backbone.name_or_path = str(path / "backbone")
        backbone.tokenizer = str(path / "backbone")
    else:
        backbone.name_or_path = info.backbone_path
    encoder = build_encoder(backbone, dtype=None if backbone_dtype is None else backbone_dtype(backbone.dtype))
    heads = [
        build_head(cfg, encoder.hidden_size, objectives=info.objectives, verbosity_index=info.verbosity_index)
        for _ in range(cfg.ensemble.size)
    ]
    model = PreferenceModel(encoder, heads, cfg, info=info, name=f"pm-{cfg.kind}:{path}", batch_size=batch_size)
    model.heads.load_state_dict(load_safetensors(path / "heads.safetensors", fix))
    model.eval()
    if device is not None:
        model.to(device)
    return model
