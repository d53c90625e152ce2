"""LoRA adapters (prefgame.lora) in every trainer, on a tiny Llama (hidden 32, 2 layers) and the test arena.

What they show: adapters start as the base model exactly and only they train; the reference π0 of a
LoRA run (the policy with its adapters disabled) computes π0 bit for bit, in the log-probs, PPO's
rollout and the Nash-MD mixture sampler; checkpoints hold the adapters (and the heads that train), not
the frozen base; for sft, dpo (offline and online), selfplay, ppo and train-pm a run resumed from a
checkpoint ends bit-identical to the uninterrupted run, and the exported merged weights are π0 with the
exported adapters merged in (so the base stayed frozen); the export loads with
``AutoModelForCausalLM.from_pretrained`` (and its adapters with peft) and gives the adapted model's
logits; two processes equal one for sft and dpo.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.launch import assert_same_weights, launch, load_weights
from helpers.tiny import TRAIN, pm_args, selfplay_args, sft_args
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

from prefgame.cli import main
from prefgame.config import load_config
from prefgame.errors import ConfigError, PrefgameError
from prefgame.game.lm_sampling import sample_tokens
from prefgame.lm import encode_prompt, load_causal_lm, load_tokenizer
from prefgame.lora import (
    ADAPTER_DIR,
    LoraConfig,
    active_model,
    adapters_of,
    apply_lora,
    merged_state_dict,
    reference,
    trained_state,
)
from prefgame.train import policy as policy_module
from prefgame.train import ppo as ppo_module
from prefgame.train.engine import load_modules, save_checkpoint
from prefgame.train.pm import PMConfig, _validate
from prefgame.train.policy import load_policy
from prefgame.train.precision import Precision
from prefgame.train.selfplay import Iterations, SelfPlayConfig
from prefgame.train.selfplay.runtime import _check_lora
from prefgame.train.sft import SFTModelConfig, build_model, save_model

peft = pytest.importorskip("peft")

LORA = ["lora.enabled=true", "lora.r=4", "lora.alpha=8"]
# π0 through the adapter-disabled policy and through a separate copy of π0 run the same operations on equal
# weights; the CPU's matrix products may still round differently for tensors at other addresses (one
# float32 ulp of a logit), while a trained adapter moves log-probs by orders of magnitude more
ATOL = 1e-5


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as π0 and, beside it (``../reward``), a random BT reward model for PPO."""
    from prefgame.models import PreferenceModel
    from prefgame.models.backbone import BackboneConfig, build_encoder
    from prefgame.models.model import PMModelConfig, build_head, save_preference_model

    root = tmp_path_factory.mktemp("lora")
    cfg = SFTModelConfig(
        tokenizer=str(arena_dir / "tokenizer"), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    model, tok = build_model(cfg, seed=0)
    save_model(model, tok, root / "pi0")
    backbone = BackboneConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_length=96)
    pm_cfg = PMModelConfig(kind="bt", backbone=backbone)
    encoder = build_encoder(backbone, seed=0)
    torch.manual_seed(1)
    save_preference_model(
        PreferenceModel(encoder, [build_head(pm_cfg, encoder.hidden_size)], pm_cfg), root / "reward", save_backbone=True
    )
    return root / "pi0"


def adapted(pi0: Path, seed: int = 0):
    """π0 with adapters whose B is random (as after training), and the tokenizer."""
    model = apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, r=4, alpha=8.0), seed=seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval(), load_tokenizer(str(pi0))


def peft_from_pretrained(base, adapter_dir: Path):
    """peft's loading of saved adapters onto ``base`` (peft reads a property transformers deprecates, as
    prefgame.lora.apply_lora notes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return peft.PeftModel.from_pretrained(base, str(adapter_dir))


def assert_base_is_pi0(model, pi0_model) -> None:
    """The adapted model's weights other than its adapters are π0's, bit for bit."""
    names = adapters_of(model).names
    base = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if k not in names}
    want = pi0_model.state_dict()
    assert base.keys() == want.keys() and all(torch.equal(base[k], want[k]) for k in want)


def token_batch(tok, n: int = 3) -> torch.Tensor:
    prompts = ["tell me about music in detail", "what is 2 plus 3 ?", "please explain garden briefly"]
    ids = [encode_prompt(tok, p) for p in prompts[:n]]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])


# ---------------------------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("job", ["sft", "train-pm", "dpo", "ppo", "selfplay"])
def test_every_trainer_has_the_one_lora_section(job: str) -> None:
    from prefgame import cli

    config = cli._load(next(j for j in cli.JOBS if j.name == job).config)
    (field,) = [f for f in dataclasses.fields(config) if f.name == "lora"]
    assert field.default_factory is LoraConfig and not config().lora.enabled  # off by default


def test_adapters_start_as_the_base_and_only_they_train(pi0: Path) -> None:
    plain = load_causal_lm(str(pi0)).eval()
    assert apply_lora(plain, LoraConfig(), seed=0) is plain and adapters_of(plain) is None  # off by default
    assert trained_state(plain) is plain
    model = apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, r=4, alpha=8.0), seed=0).eval()
    x = token_batch(load_tokenizer(str(pi0)))
    with torch.no_grad():
        assert torch.equal(model(x).logits, plain(x).logits)  # B = 0: the adapted model is π0 exactly
    names = adapters_of(model).names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # every linear layer of the blocks has adapters (all-linear), the output projection has none
    assert sum(".lora_A." in n for n in names) == 2 * 7
    assert not any(n.startswith("lm_head") for n in names)
    # the adapters are a function of the seed alone
    again = apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, r=4, alpha=8.0), seed=0)
    other = apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, r=4, alpha=8.0), seed=1)
    a, b, c = (trained_state(m).state_dict() for m in (model, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_reference_is_the_base_with_adapters_disabled(pi0: Path) -> None:
    model, tok = adapted(pi0)
    plain = load_causal_lm(str(pi0)).eval()
    ref = reference(model)
    x = token_batch(tok)
    assert_base_is_pi0(model, plain)
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, plain(x).logits)
        with active_model(ref) as net:
            assert net is model
            torch.testing.assert_close(net(x).logits, plain(x).logits, rtol=0, atol=ATOL)
        assert not torch.allclose(model(x).logits, plain(x).logits)  # enabled again after the block
    with active_model(plain) as net:
        assert net is plain
    # Nash-MD's mixture sampler: the reference's forward passes, interleaved with the policy's, are π0's
    ids = [encode_prompt(tok, p) for p in ("what is 2 plus 3 ?", "tell me about music in detail")]
    kwargs = dict(max_new_tokens=8, stops=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for beta, cache in ((0.5, True), (0.5, False), (1.0, True)):
        got = sample_tokens(
            model, ref, ids, mixture_coef=beta, generator=torch.Generator().manual_seed(3), use_cache=cache, **kwargs
        )
        want = sample_tokens(
            model, plain, ids, mixture_coef=beta, generator=torch.Generator().manual_seed(3), use_cache=cache, **kwargs
        )
        assert torch.equal(got.tokens, want.tokens), (beta, cache)
        torch.testing.assert_close(got.logps, want.logps, rtol=0, atol=ATOL)
    model.train()
    sample_tokens(model, ref, ids, mixture_coef=0.5, **kwargs)
    assert model.training  # the shared module's mode is restored once, not overwritten by the reference's


def test_checkpoints_hold_the_adapters_and_restore_them(pi0: Path, tmp_path: Path) -> None:
    model, _ = adapted(pi0, seed=0)
    fresh = apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, r=4, alpha=8.0), seed=5)
    view = trained_state(model)
    assert set(view.state_dict()) == adapters_of(model).names
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = save_checkpoint(tmp_path, 1, modules={"model": view}, optimizer=opt, scheduler=sched, state={})
    assert set(load_file(str(path / "model.safetensors"))) == adapters_of(model).names
    load_modules(path, {"model": trained_state(fresh)})
    x = token_batch(load_tokenizer(str(pi0)))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x).logits, model(x).logits)
    # a checkpoint of another run's shape fails in one line
    wider = apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, r=8, alpha=8.0), seed=0)
    with pytest.raises(PrefgameError, match="does not fit the model of this run"):
        load_modules(path, {"model": trained_state(wider)})
    with pytest.raises(PrefgameError, match="does not fit the model of this run"):
        load_modules(path, {"model": load_causal_lm(str(pi0))})


def test_export_loads_with_from_pretrained_and_gives_the_adapted_logits(pi0: Path, tmp_path: Path) -> None:
    model, tok = adapted(pi0)
    save_model(model, tok, tmp_path / "model")
    x = token_batch(tok)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        want = model(x).logits
        torch.testing.assert_close(merged(x).logits, want, rtol=1e-5, atol=1e-5)
        # the adapters alone, on π0, with peft
        config = json.loads((tmp_path / "model" / ADAPTER_DIR / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["base_model_name_or_path"] == str(pi0)
        with_adapters = peft_from_pretrained(load_causal_lm(str(pi0)), str(tmp_path / "model" / ADAPTER_DIR))
        torch.testing.assert_close(with_adapters.eval()(x).logits, want, rtol=1e-5, atol=1e-5)
    assert {p.name for p in (tmp_path / "model" / ADAPTER_DIR).iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }


def test_bfloat16_base_trains_float32_adapters_and_exports_as_peft_merges(pi0: Path) -> None:
    """Frozen weights in bf16 keep float32 adapters (peft's default: what trains has float32 weights); the
    export is in the base's dtype and equals peft's own merge."""
    model = apply_lora(load_causal_lm(str(pi0), dtype=torch.bfloat16), LoraConfig(enabled=True, r=4), seed=0)
    names = adapters_of(model).names
    assert {p.dtype for n, p in model.named_parameters() if n in names} == {torch.float32}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    merged = merged_state_dict(model)
    assert {v.dtype for v in merged.values()} == {torch.bfloat16}
    peft_merged = copy.deepcopy(adapters_of(model).peft_model).merge_and_unload().state_dict()
    assert all(torch.equal(merged[k], peft_merged[k]) for k in merged)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")  # adapting lm_head, refused
def test_settings_that_cannot_work_fail_in_one_line(pi0: Path, arena_dir: Path) -> None:
    with pytest.raises(ConfigError, match="output projection"):
        apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, target_modules=["q_proj", "lm_head"]), seed=0)
    with pytest.raises(ConfigError, match="lora.target_modules"):
        apply_lora(load_causal_lm(str(pi0)), LoraConfig(enabled=True, target_modules=["no_such_proj"]), seed=0)
    with pytest.raises(ValueError, match="lora.r"):
        LoraConfig(enabled=True, r=0)
    with pytest.raises(ConfigError, match="model.backbone.freeze=false"):
        _validate(load_config(PMConfig, None, [*pm_args(arena_dir), "model.backbone.freeze=true", *LORA]))
    cfg = load_config(SelfPlayConfig, None, [f"policy.name_or_path={pi0}", "train.average_from=0", *LORA])
    with pytest.raises(ConfigError, match="average_from"):
        _check_lora(cfg, Iterations.of(cfg.train))
    cfg = load_config(SelfPlayConfig, None, [f"policy.name_or_path={pi0}", "sampling.backend=vllm", *LORA])
    with pytest.raises(ConfigError, match="vllm"):
        _check_lora(cfg, Iterations.of(cfg.train))
    policy = load_config(SelfPlayConfig, None, [f"policy.name_or_path={pi0}", "policy.offload_reference=true"]).policy
    with pytest.raises(ConfigError, match="offload_reference"):
        load_policy(policy, "cpu", Precision(), lora=LoraConfig(enabled=True), seed=0)


# ---------------------------------------------------------------------------------------------- trainers


@dataclass(frozen=True)
class Case:
    """One trainer's LoRA run: ``args(arena, pi0)`` (a checkpoint after the first of two or four steps or
    iterations), the checkpoint files and the keys they hold besides the adapters."""

    job: str
    args: Callable[[Path, Path], list[str]]
    heads: tuple[str, ...] = ()  # checkpoint entries that train in full (PPO's value head)
    backbone: str = "model"  # the exported causal LM / backbone folder under output_dir


EVAL = ["eval.prompts=4", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1"]
STEPS = ["train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=1", "train.micro_batch_size=4"]
ON_POLICY = ["sampling.max_new_tokens=6", "train.lr=1e-2", "train.mixed_precision=no", "eval.every=1", *EVAL]


def dpo_offline(arena: Path, pi0: Path) -> list[str]:
    data = [f"data.path={arena / 'pairs.jsonl'}", "data.max_pairs=60", "data.eval_fraction=0.2", "data.max_length=64"]
    return [f"policy.name_or_path={pi0}", *data, *TRAIN, *STEPS, *EVAL]


def dpo_online(arena: Path, pi0: Path) -> list[str]:
    rounds = ["online.rounds=2", "online.steps_per_round=2", "sampling.prompts_per_iteration=4"]
    return [f"policy.name_or_path={pi0}", "mode=online", "oracle.kind=gold", *rounds, "train.batch_size=4", *ON_POLICY]


def selfplay(arena: Path, pi0: Path) -> list[str]:
    # nash_md samples its opponents from the token-level mixture of π and π0 (β = 0.5)
    iters = ["train.iterations=2", "train.steps_per_iteration=2", "sampling.prompts_per_iteration=4"]
    mixture = ["algorithm=nash_md", "game.mixture_coef=0.5", "sampling.samples_per_prompt=2", "train.batch_size=8"]
    return [f"policy.name_or_path={pi0}", *mixture, *iters, *ON_POLICY]


def ppo(arena: Path, pi0: Path) -> list[str]:
    rollouts = ["train.rollout_batch_size=8", "train.mini_batch_size=4", "ppo.epochs=1", "train.save_every=1"]
    reward = [f"reward.path={pi0.parent / 'reward'}", "reward.normalize_samples=8"]
    return [f"policy.name_or_path={pi0}", *reward, "train.iterations=2", *rollouts, *ON_POLICY]


CASES = [
    Case("sft", lambda arena, pi0: [*sft_args(arena), f"model.name_or_path={pi0}", *STEPS]),
    Case("dpo", dpo_offline),
    Case("dpo", dpo_online),
    Case("selfplay", selfplay),
    Case("ppo", ppo, heads=("value_head.weight", "value_head.bias")),
    Case(
        "train-pm",
        lambda arena, pi0: [*pm_args(arena), f"model.backbone.name_or_path={pi0}", "model.kind=bt", *STEPS],
        backbone="model/backbone",
    ),
]
IDS = ["sft", "dpo-offline", "dpo-online", "selfplay", "ppo", "train-pm"]


@pytest.fixture
def reference_checks(pi0: Path, monkeypatch) -> list[str]:
    """Every held-out measurement and PPO rollout of the run checks that its reference computes π0 bit
    for bit (a plain copy of π0 through the same code); the names of the checks that ran."""
    plain = load_causal_lm(str(pi0)).eval()
    ran: list[str] = []
    measure, rollout = policy_module.PolicyEvaluator.measure, ppo_module.PPO.rollout

    def checking_measure(self, t):
        rt = self.rt
        assert_base_is_pi0(rt.policy, plain)
        got, want = rt.sequence_logps(rt.ref, self.reference), rt.sequence_logps(plain, self.reference)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
        if t > 0:  # the policy itself has moved away from π0
            assert (rt.sequence_logps(rt.policy, self.reference) - want).abs().max() > 100 * ATOL
        ran.append(f"measure {t}")
        return measure(self, t)

    def checking_rollout(self, t):
        ro = rollout(self, t)
        batch = self.batch(ro.responses, range(len(ro.responses)))
        with torch.no_grad():
            hidden = ppo_module.final_hidden(plain, batch["input_ids"], batch["attention_mask"])
            want = ppo_module.hidden_token_logps(plain, hidden, batch["input_ids"], ro.mask, chunk_size=1024)
        torch.testing.assert_close(ro.ref_logps[ro.mask], want[ro.mask].float(), rtol=0, atol=ATOL)
        ran.append(f"rollout {t}")
        return ro

    monkeypatch.setattr(policy_module.PolicyEvaluator, "measure", checking_measure)
    monkeypatch.setattr(ppo_module.PPO, "rollout", checking_rollout)
    return ran


def cut_after_first_checkpoint(full: Path, cut: Path) -> None:
    """``cut`` as a run killed after its first checkpoint leaves it: no model, no summary, no later checkpoint."""
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "model")
    (cut / "metrics.json").unlink()
    for later in sorted((cut / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lora_run_trains_adapters_keeps_reference_and_resumes_exactly(
    case: Case, arena_dir: Path, pi0: Path, tmp_path: Path, reference_checks: list[str]
) -> None:
    args = [*case.args(arena_dir, pi0), *LORA]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([case.job, *args, f"output_dir={full}"]) == 0
    if case.job not in ("sft", "train-pm"):  # the policy trainers measure against their reference
        assert any(c.startswith("measure") for c in reference_checks)
        assert (case.job == "ppo") == any(c.startswith("rollout") for c in reference_checks)

    # the checkpoint holds the adapters (and what trains in full), not the frozen base
    checkpoint = sorted((full / "checkpoints").glob("step-*"))[0]
    if case.job == "train-pm":
        encoder = load_file(str(checkpoint / "encoder.safetensors"))
        assert encoder and all(".lora_A." in k or ".lora_B." in k for k in encoder)
        assert load_file(str(checkpoint / "heads.safetensors"))
    else:
        (saved,) = [load_file(str(p)) for p in checkpoint.glob("*.safetensors")]
        adapters = [k for k in saved if ".lora_A." in k or ".lora_B." in k]
        assert adapters and sorted(set(saved) - set(adapters)) == sorted(case.heads)

    # the export: merged weights that are π0's base with the exported adapters merged in (the base stayed
    # frozen), and adapters that trained
    folder = full / case.backbone
    exported = load_file(str(folder / "model.safetensors"))
    base = AutoModel.from_pretrained(str(pi0)) if case.job == "train-pm" else load_causal_lm(str(pi0))
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}  # peft's merge below writes into base
    merged = peft_from_pretrained(base, str(folder / ADAPTER_DIR)).merge_and_unload().state_dict()
    for name, tensor in exported.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6, msg=name)
    lora_b = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in lora_b.items())  # B left its zeros
    changed = {k for k in exported if not torch.equal(exported[k], base_weights[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only adapted layers moved

    # a run killed after its first checkpoint and resumed ends bit-identical
    cut_after_first_checkpoint(full, cut)
    assert main([case.job, *args, f"output_dir={cut}", "resume=true"]) == 0
    assert "resumed from" in (cut / "log.txt").read_text()
    assert_same_weights(full / "model", cut / "model")
    assert rows(cut) == rows(full)


# ---------------------------------------------------------------------------------------------- processes


def _two_process_args(job: str, arena_dir: Path, pi0: Path) -> list[str]:
    """Each trainer's settings for the invariance run (global batch 8), as tests/test_distributed.py's."""
    if job == "sft":
        return [*sft_args(arena_dir), f"model.name_or_path={pi0}", "train.max_steps=4", "train.save_every=0"]
    if job == "dpo":
        data = [f"data.path={arena_dir / 'pairs.jsonl'}", "data.eval_fraction=0", "data.max_length=64"]
        return [f"policy.name_or_path={pi0}", *data, *TRAIN, "train.max_steps=4", "train.save_every=0"]
    if job == "train-pm":
        backbone = [f"model.backbone.name_or_path={pi0}", "model.kind=bt"]
        return [*pm_args(arena_dir), *backbone, "train.max_steps=4", "train.save_every=0"]
    return selfplay_args(pi0)


@pytest.mark.parametrize(
    "job",
    ["sft", "dpo", pytest.param("train-pm", marks=pytest.mark.slow), pytest.param("selfplay", marks=pytest.mark.slow)],
)
def test_two_processes_equal_one_with_lora(job: str, arena_dir: Path, pi0: Path, tmp_path: Path) -> None:
    """As tests/test_distributed.py: two CPU processes (gloo) with micro-batches of 4 each equal one process
    with two micro-batches of 4, within float32 summation order. (PPO is not process-count invariant with or
    without LoRA: tests/test_distributed.py's strict xfail.)"""
    args = [*_two_process_args(job, arena_dir, pi0), *LORA, "train.micro_batch_size=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([job, *args, f"output_dir={one}"]) == 0
    launch(job, [*args, f"output_dir={two}"], nproc=2)
    folder = "model/backbone" if job == "train-pm" else "model"  # a preference model's head is in model/
    for weights in {"model", folder}:
        assert_same_weights(one / weights, two / weights, atol=2e-5)
    adapters = load_weights(one / folder / ADAPTER_DIR)
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in adapters.items())
