"""The arena's word-level tokenizer and tiny Llama-style causal LM config.

The tokenizer is a `tokenizers` WordLevel model over the arena vocabulary, wrapped as a transformers
fast tokenizer with a chat template, saved with ``save_pretrained`` and loaded with
``AutoTokenizer.from_pretrained`` like any other. Arena texts are lower case with punctuation split
by spaces, so ``decode(encode(text)) == text``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from prefgame.arena import world

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>")
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}<assistant> {{ m['content'] }} <eos> "
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def arena_vocabulary() -> list[str]:
    """Every word the arena's prompts and responses can contain, in a fixed order."""
    words: list[str] = []
    texts = [p.text for p in world.all_prompts()[:1]]
    texts += [
        " ".join(world.OPENERS),
        " ".join(world.ASKS),
        " ".join(world.TOPICS),
        " ".join(world.MODIFIERS),
    ]
    texts += [
        "and what is plus ? , . the answer is",
        " ".join(str(i) for i in range(2 * world.MAX_OPERAND + 1)),
    ]
    texts += [" ".join(v) for v in world.STYLE_WORDS.values()]
    texts += [s for facts in world.TOPIC_FACTS.values() for s in facts]
    texts += list(world.UNSAFE_SENTENCES) + [f.format(w="") for f in world.FILLER]
    for text in texts:
        for w in text.split():
            if w not in words:
                words.append(w)
    return words


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in arena_vocabulary():
        vocab.setdefault(w, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # generation pads on the left; training code pads explicitly. A constructor argument, so that
        # save_pretrained keeps it (setting the attribute afterwards is lost on reload).
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    tok = build_tokenizer()
    tok.save_pretrained(str(path))
    return tok


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 96,
) -> LlamaConfig:
    """A ~1M-parameter Llama-style config sized for the arena (sequences ≤ 64 tokens)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )


def new_tiny_model(model_class, cfg, *, seed: int, max_position_embeddings: int = 96):
    """(model, tokenizer): a new ``model_class`` (``LlamaForCausalLM``, ``LlamaModel``) of
    :func:`tiny_llama_config` sized by ``cfg`` (its ``hidden_size``, ``num_layers``, ``num_heads``,
    ``intermediate_size``) with ``cfg.tokenizer`` or the arena's, its weights drawn after
    ``torch.manual_seed(seed)``."""
    import torch

    from prefgame.lm import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else build_tokenizer()
    torch.manual_seed(seed)
    config = tiny_llama_config(
        tok, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=max_position_embeddings,
    )  # fmt: skip
    return model_class(config), tok
