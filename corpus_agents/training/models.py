"""Llama-style causal LM presets, from a few million parameters (CI) to the paper's 1.3B, and tokenizers.

Models are plain `transformers` LlamaForCausalLM built from a config, trained from scratch and saved with
`save_pretrained`, so any other tool can load the checkpoints. Tokenizers are either trained on a corpus
sample with `tokenizers` (byte-level BPE) or loaded from a path or hub name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corpus_agents.config import MODEL_PRESETS
from corpus_agents.errors import CorpusAgentsError, one_line

#: Model sizes by preset name (defined with the config, which checks `model.preset` at load).
PRESETS = MODEL_PRESETS
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


def build_model(preset: str, vocab_size: int, max_length: int, seed: int, **overrides: Any) -> Any:
    """A freshly initialised LlamaForCausalLM of a preset size (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise CorpusAgentsError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
    config = LlamaConfig(
        **{"tie_word_embeddings": True, **PRESETS[preset], **overrides},
        vocab_size=vocab_size,
        max_position_embeddings=max_length,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def train_tokenizer(texts: list[str], vocab_size: int, path: Path) -> Any:
    """Train a byte-level BPE tokenizer on a corpus sample and save it as a `transformers` tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1]
    )
    wrapped.save_pretrained(str(path))
    return wrapped


def load_tokenizer(name_or_path: str) -> Any:
    """A fast tokenizer from a directory or hub name; gets an EOS and a pad token if it lacks them."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise CorpusAgentsError(f"cannot load tokenizer {name_or_path!r}: {one_line(exc)}") from None
    if tok.eos_token_id is None:
        tok.add_special_tokens({"eos_token": SPECIAL_TOKENS[0]})
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
