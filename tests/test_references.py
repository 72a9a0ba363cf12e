"""Reference tasks: loading (shared sets, seeded disjoint split, errors), answer-only labels, the loss."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from corpus_agents.config import ConfigError
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.training.references import (
    IGNORE_INDEX,
    ReferenceSetError,
    ReferenceSpec,
    encode_examples,
    load_reference,
    reference_loss,
)

SHARED = Path(os.environ.get("CORPUS_AGENTS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REFERENCE_DIR = SHARED / "data" / "reference"
SHARED_TEMPLATES = {  # (prompt, answer) of each shared set
    "lambada": ("{until_last}", " {last_word}"),
    "squad": ("{context}\nQuestion: {question}\nAnswer:", " {answers[text][0]}"),
    "jeopardy": ("{context}\nAnswer:", " {continuation}"),
}
WORDS = "the a cat dog sat ran on under mat log red blue big small quickly slowly".split()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word (so positions are easy to check); no pad token."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def write_table(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason=f"no shared reference data at {REFERENCE_DIR}")
@pytest.mark.parametrize("name", list(SHARED_TEMPLATES))
def test_shared_reference_sets_load_from_one_line_of_config(name: str) -> None:
    prompt, answer = SHARED_TEMPLATES[name]
    config = {
        "name": name,
        "path": str(REFERENCE_DIR / f"{name}.parquet"),
        "prompt": prompt,
        "answer": answer,
    }
    ref = load_reference(ReferenceSpec.from_dict(config))
    assert ref.name == config["name"]
    total = len(ref.probe) + len(ref.heldout)
    assert 800 <= total <= 1000  # max_examples = 1000 sampled (jeopardy has 876 rows)
    assert abs(len(ref.probe) - len(ref.heldout)) <= 1
    assert not set(ref.probe) & set(ref.heldout)
    for prompt, answer in ref.probe + ref.heldout:
        assert prompt and answer.startswith(" ") and len(answer) > 1
    if config["name"] == "squad":
        assert all(p.endswith("\nAnswer:") and "\nQuestion: " in p for p, _ in ref.probe)


def test_split_is_seeded_disjoint_and_deduplicated(tmp_path: Path) -> None:
    rows = [{"q": f"question {i}", "a": {"text": [f"answer {i}", "other"]}} for i in range(40)]
    path = write_table(tmp_path / "set.parquet", rows + rows[:5])  # five duplicate rows
    config = {
        "name": "t",
        "path": str(path),
        "prompt": "{q}",
        "answer": " {a[text][0]}",
        "probe_fraction": 0.25,
    }
    ref = load_reference(ReferenceSpec.from_dict(config))
    assert len(ref.probe) == 10 and len(ref.heldout) == 30
    assert set(ref.probe) | set(ref.heldout) == {(f"question {i}", f" answer {i}") for i in range(40)}
    assert not set(ref.probe) & set(ref.heldout)
    again = load_reference(ReferenceSpec.from_dict(config))
    assert (again.probe, again.heldout) == (ref.probe, ref.heldout)
    other = load_reference(ReferenceSpec.from_dict({**config, "seed": 1}))
    assert other.probe != ref.probe
    sampled = load_reference(ReferenceSpec.from_dict({**config, "max_examples": 12}))
    assert len(sampled.probe) + len(sampled.heldout) == 12
    assert set(sampled.probe + sampled.heldout) <= set(ref.probe + ref.heldout)


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_table(tmp_path / "set.parquet", [{"q": "x", "a": "y"}])
    base = {"name": "t", "path": str(path), "prompt": "{q}", "answer": " {a}"}
    with pytest.raises(ReferenceSetError, match="no such Parquet file"):
        load_reference(ReferenceSpec.from_dict({**base, "path": str(tmp_path / "nope.parquet")}))
    with pytest.raises(ReferenceSetError, match=r"missing columns \['question'\]"):
        load_reference(ReferenceSpec.from_dict({**base, "prompt": "{question}"}))
    with pytest.raises(ReferenceSetError, match="fails on row 0"):
        load_reference(ReferenceSpec.from_dict({**base, "answer": " {a[text]}"}))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"q": pa.array([], pa.string()), "a": pa.array([], pa.string())}), empty)
    with pytest.raises(ReferenceSetError, match="no rows"):
        load_reference(ReferenceSpec.from_dict({**base, "path": str(empty)}))
    with pytest.raises(ConfigError, match="unknown config key reference.promt"):
        ReferenceSpec.from_dict({**base, "promt": "{q}"})
    with pytest.raises(ConfigError, match="exactly one of"):
        ReferenceSpec.from_dict({**base, "dataset": "lambada"})
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    spec = ReferenceSpec.from_dict({"name": "t", "dataset": "x", "prompt": "{q}", "answer": "{a}"})
    with pytest.raises(CorpusAgentsError, match=r"pip install datasets"):
        load_reference(spec)


def test_labels_mask_exactly_the_prompt_and_padding(tokenizer: PreTrainedTokenizerFast) -> None:
    pairs = [("the cat sat on", " the mat"), ("a dog", " ran quickly under the log"), ("big", " red")]
    batches = encode_examples(tokenizer, pairs, max_length=64, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [torch.Size([2, 7]), torch.Size([1, 2])]
    eos = tokenizer.eos_token_id  # no pad token: padding uses eos, masked out
    rows = [
        (b["input_ids"][r], b["attention_mask"][r], b["labels"][r])
        for b in batches
        for r in range(len(b["labels"]))
    ]
    for (prompt, answer), (ids, mask, labels) in zip(pairs, rows):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        n = len(p) + len(a)
        assert ids[:n].tolist() == p + a and (ids[n:] == eos).all()
        assert mask.tolist() == [1] * n + [0] * (len(ids) - n)
        assert labels.tolist() == [IGNORE_INDEX] * len(p) + a + [IGNORE_INDEX] * (len(ids) - n)
        assert all(b["input_ids"].dtype == torch.long for b in batches)


def test_prompt_is_truncated_from_the_left(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt = "the a cat dog sat ran on under"
    (batch,) = encode_examples(tokenizer, [(prompt, " big red mat")], max_length=5)
    assert tokenizer.decode(batch["input_ids"][0]) == "on under big red mat"
    assert batch["labels"][0, :2].tolist() == [IGNORE_INDEX] * 2 and (batch["labels"][0, 2:] >= 0).all()
    (long_answer,) = encode_examples(tokenizer, [(prompt, " big red mat log")], max_length=3)
    assert tokenizer.decode(long_answer["input_ids"][0]) == "under big red"  # one token of context kept


def test_reference_loss_equals_hand_computed_loss(tokenizer: PreTrainedTokenizerFast) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config).train()
    pairs = [("the cat sat on", " the mat"), ("a dog", " ran quickly under the log"), ("big", " red")]
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, answer in pairs:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"]
            logp = model.eval()(torch.tensor([p + a])).logits[0].log_softmax(-1)
            for i, token in enumerate(a):
                total -= logp[len(p) + i - 1, token].item()
                count += 1
    model.train()
    loss = reference_loss(model, encode_examples(tokenizer, pairs, batch_size=2))
    assert loss == pytest.approx(total / count, rel=1e-5)
    assert model.training  # the mode is restored
