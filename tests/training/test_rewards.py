"""Rewards: per-example gradients, sign, agreement with the one-step oracle, exact restore, projection."""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Iterator
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from corpus_agents.training.references import encode_examples, token_loss_sums
from corpus_agents.training.rewards import (
    doc_loss,
    encode_documents,
    gradient_rewards,
    one_step_rewards,
    pad_documents,
    per_example_gradients,
    standardize,
)

MAX_LEN = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster than on several when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prose() -> list[str]:
    """Sentences of the Python documentation's prose (stdlib `pydoc_data`), 8 to 40 words each."""
    text = " ".join(topics[name] for name in sorted(topics))
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    sentences = [s for s in sentences if 8 <= len(s.split()) <= 40 and s.isascii()]
    random.Random(0).shuffle(sentences)
    return sentences


@pytest.fixture(scope="module")
def tokenizer(prose: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(prose[:3000], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def reference_batches(tokenizer: PreTrainedTokenizerFast, sentences: list[str]) -> list[dict]:
    """A reference task on prose: continue a sentence from its first half."""
    halves = [
        (" ".join(w[: len(w) // 2]), " " + " ".join(w[len(w) // 2 :])) for w in (s.split() for s in sentences)
    ]
    return encode_examples(tokenizer, halves, max_length=MAX_LEN)


@pytest.fixture(scope="module")
def trained(prose: list[str], tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """The tiny model after 120 AdamW steps on prose (sentences 1000+, disjoint from the probes below).

    The learning rate decays linearly to 0, so the model is not left mid-oscillation, where any gradient
    that merely softens the output distribution (even one from noise) lowers every loss.
    """
    model = tiny_model(len(tokenizer)).train()
    docs = encode_documents(tokenizer, prose[1000:], MAX_LEN)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = 120
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    gen = random.Random(0)
    for _ in range(steps):
        ids, labels = pad_documents(gen.sample(docs, 16), MAX_LEN)
        sums, counts = token_loss_sums(model(input_ids=ids).logits, labels)
        opt.zero_grad()
        (sums.sum() / counts.sum()).backward()
        opt.step()
        schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def refs(prose: list[str], tokenizer: PreTrainedTokenizerFast) -> dict[str, list[dict]]:
    return {
        "first": reference_batches(tokenizer, prose[:48]),
        "second": reference_batches(tokenizer, prose[48:96]),
    }


def flat_grad(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def ref_loss_tensor(model: torch.nn.Module, batches: list[dict]) -> torch.Tensor:
    """The mean answer-token loss, differentiable (a plain, independent implementation)."""
    total, count = 0.0, 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        labels = b["labels"][:, 1:]
        total = total + torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum")
        count += int((labels != -100).sum())
    return total / count


def test_vmap_gradients_equal_per_document_backward(prose, tokenizer, refs) -> None:
    config_model = tiny_model(len(tokenizer))
    config_model.config.attention_dropout = 0.5  # must be switched off while probing
    model = config_model.train()
    docs = encode_documents(tokenizer, prose[100:105], MAX_LEN)
    docs[2] = docs[2][:7]  # different lengths: padding must not leak into any gradient
    grads = per_example_gradients(model, docs, MAX_LEN)
    assert model.training
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    for i, doc in enumerate(docs):
        expected = torch.autograd.grad(doc_loss(model, doc), list(model.parameters()))
        for name, g in zip(names, expected):
            torch.testing.assert_close(grads[name][i], g, rtol=1e-4, atol=1e-6)
    g_ref = {t: flat_grad(model, ref_loss_tensor(model, b)) for t, b in refs.items()}
    g_doc = [flat_grad(model, doc_loss(model, d)) for d in docs]
    expected_dot = np.array([[float(g @ g_ref[t]) for t in refs] for g in g_doc])
    expected_cos = np.array(
        [[float(torch.cosine_similarity(g, g_ref[t], dim=0)) for t in refs] for g in g_doc]
    )
    model.train()
    np.testing.assert_allclose(gradient_rewards(model, refs, docs, chunk_size=2), expected_dot, rtol=1e-3)
    np.testing.assert_allclose(gradient_rewards(model, refs, docs, cosine=True), expected_cos, rtol=1e-3)
    assert model.training


def test_in_distribution_documents_earn_more_than_noise(trained, prose, tokenizer, refs) -> None:
    real = encode_documents(
        tokenizer, [" ".join(prose[200 + 3 * i : 203 + 3 * i]) for i in range(8)], MAX_LEN
    )
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz ,.()"
    chars = encode_documents(tokenizer, ["".join(rng.choices(letters, k=300)) for _ in range(4)], MAX_LEN)
    shuffled = [rng.sample(d, len(d)) for d in real[:4]]
    rewards = gradient_rewards(trained, refs, real + chars + shuffled)
    real_mean, noise_mean = rewards[:8].mean(0), rewards[8:].mean(0)
    assert (real_mean > 0).all() and (real_mean > noise_mean).all()
    z = standardize(rewards)
    assert z[:8].mean() > z[8:].mean() + 0.5


def test_one_step_sgd_matches_lr_times_gradient_reward(trained, prose, tokenizer, refs) -> None:
    model = copy.deepcopy(trained).double()  # float64: L_before - L_after is ~1e-5 of a loss of ~4
    docs = encode_documents(
        tokenizer, [" ".join(prose[300 + 3 * i : 303 + 3 * i]) for i in range(4)], MAX_LEN
    )
    lr = 1e-4  # the second-order term is ~lr / 1e-2 relative: 0.7% here
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # overridden by lr=
    oracle = one_step_rewards(model, opt, docs, refs, lr=lr)
    np.testing.assert_allclose(oracle, lr * gradient_rewards(model, refs, docs), rtol=0.02)
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("warm", [False, True], ids=["fresh-optimizer", "after-two-steps"])
def test_one_step_restores_model_and_adamw_state_bit_for_bit(prose, tokenizer, refs, warm) -> None:
    model = tiny_model(len(tokenizer), seed=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_doc = encode_documents(tokenizer, prose[400:401], MAX_LEN)[0]
    for _ in range(2 if warm else 0):
        opt.zero_grad()
        doc_loss(model, train_doc).backward()
        opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    state_dict = opt.state_dict()
    expected_state = {i: {k: v.clone() for k, v in s.items()} for i, s in state_dict["state"].items()}
    rng = torch.get_rng_state()
    docs = encode_documents(tokenizer, prose[401:404], MAX_LEN)
    rewards = one_step_rewards(model, opt, docs, refs)
    assert rewards.shape == (3, 2) and np.abs(rewards).min() > 0
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and p.grad is grads[n]
    after = opt.state_dict()
    assert after["param_groups"] == state_dict["param_groups"]
    assert after["state"].keys() == expected_state.keys() and (len(expected_state) > 0) == warm
    for i, saved in expected_state.items():
        assert after["state"][i].keys() == saved.keys()
        for k, v in saved.items():
            assert torch.equal(after["state"][i][k], v), (i, k)
    if warm:
        assert all(float(s["step"]) == 2.0 for s in after["state"].values())
    assert np.array_equal(one_step_rewards(model, opt, docs, refs), rewards)  # nothing drifted


def test_projection_keeps_the_ranking_and_is_seeded(trained, prose, tokenizer, refs) -> None:
    docs = encode_documents(
        tokenizer, [" ".join(prose[500 + 2 * i : 502 + 2 * i]) for i in range(24)], MAX_LEN
    )
    exact = gradient_rewards(trained, refs, docs)
    projected = gradient_rewards(trained, refs, docs, projection_dim=4096, seed=3)
    for t in range(len(refs)):
        assert np.corrcoef(exact[:, t], projected[:, t])[0, 1] > 0.9
        ranks = np.argsort(np.argsort(exact[:, t])), np.argsort(np.argsort(projected[:, t]))
        assert np.corrcoef(*ranks)[0, 1] > 0.9  # Spearman
    assert np.array_equal(
        projected, gradient_rewards(trained, refs, docs, projection_dim=4096, seed=3, chunk_size=5)
    )
    assert not np.array_equal(projected, gradient_rewards(trained, refs, docs, projection_dim=4096, seed=4))
    cos = gradient_rewards(trained, refs, docs, projection_dim=4096, seed=3, cosine=True)
    assert np.abs(cos).max() <= 1 and np.corrcoef(cos[:, 0], exact[:, 0])[0, 1] > 0.8


def test_standardize() -> None:
    rewards = np.array([[1.0, 5.0, 2.0], [2.0, 5.0, 4.0], [3.0, 5.0, 6.0]])
    z = np.sqrt(1.5)  # (x - mean) / population std for [1, 2, 3] and [2, 4, 6]
    np.testing.assert_allclose(standardize(rewards), [-2 * z / 3, 0.0, 2 * z / 3])
    np.testing.assert_array_equal(standardize(np.full((4, 2), 0.1)), np.zeros(4))
    np.testing.assert_array_equal(standardize(np.array([[3.0, -1.0]])), [0.0])
    np.testing.assert_allclose(standardize(rewards * 1e-9 + 7), standardize(rewards), rtol=1e-6)  # scale-free
    with pytest.raises(ValueError, match="n_docs, n_tasks"):
        standardize(np.ones(3))


class CumulativeLM(torch.nn.Module):
    """A causal LM that is not a Hugging Face model: no config, a forward of `input_ids` only, and a logits
    tensor as output (each position sees the mean embedding of itself and the positions before it)."""

    def __init__(self, vocab_size: int, dim: int = 16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids).cumsum(1)
        h = h / torch.arange(1, input_ids.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        return self.head(torch.tanh(self.mix(h)))


def test_rewards_work_on_any_causal_lm_module(prose, tokenizer, refs) -> None:
    """Gradient rewards of a plain module equal <g_ref, g_doc> by plain autograd; the one-step oracle agrees
    with lr x gradient and leaves the module as it was; FLOP params leave out its embedding table."""
    from corpus_agents.training.compute import flop_params

    torch.manual_seed(0)
    model = CumulativeLM(len(tokenizer)).double()
    docs = encode_documents(
        tokenizer, [" ".join(prose[400 + 2 * i : 402 + 2 * i]) for i in range(5)], MAX_LEN
    )
    rewards = gradient_rewards(model, refs, docs, chunk_size=2)
    for t, batches in enumerate(refs.values()):
        total, count = 0.0, 0
        for b in batches:  # the mean answer-token loss, padding right (no mask needed by a causal model)
            logits = model(b["input_ids"])[:, :-1]
            labels = b["labels"][:, 1:]
            total = total + torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum")
            count += int((labels != -100).sum())
        g_ref = flat_grad(model, total / count)
        for i, doc in enumerate(docs):
            ids = torch.tensor([doc])
            loss = torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:])
            assert rewards[i, t] == pytest.approx(float(g_ref @ flat_grad(model, loss)), rel=1e-9)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr = 1e-4
    oracle = one_step_rewards(model, torch.optim.SGD(model.parameters(), lr=0.1), docs, refs, lr=lr)
    np.testing.assert_allclose(oracle, lr * rewards, rtol=0.02)
    assert all((v == before[k]).all() for k, v in model.state_dict().items())
    total = sum(p.numel() for p in model.parameters())
    assert flop_params(model) == total - model.embed.weight.numel()
