"""Rewards: how much training on a document would lower each reference task's loss (gradient or one step)."""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from corpus_agents.training.compute import FORWARD, FORWARD_BACKWARD, Compute, batch_tokens, flop_params
from corpus_agents.training.references import (
    IGNORE_INDEX,
    Batch,
    ReferenceSetError,
    eval_mode,
    lm_inputs,
    lm_logits,
    model_device,
    reference_loss,
    token_loss_sums,
)

Grads = dict[str, torch.Tensor]


def encode_documents(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (no special tokens), truncated to its first `max_length` tokens."""
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def pad_documents(docs: Sequence[Sequence[int]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and `labels` (-100 on padding) of documents cut to `max_length` tokens.

    Right padding needs no attention mask for a causal LM: a real token never attends to a later position,
    so padding after it changes neither its logits nor its gradient.
    """
    docs = [list(d)[:max_length] for d in docs]
    width = max(2, max(len(d) for d in docs))
    ids = torch.zeros((len(docs), width), dtype=torch.long)
    labels = torch.full((len(docs), width), IGNORE_INDEX, dtype=torch.long)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)] = torch.tensor(doc, dtype=torch.long)
        labels[row, : len(doc)] = ids[row, : len(doc)]
    return ids, labels


def doc_loss(model: torch.nn.Module, token_ids: Sequence[int], max_length: int = 512) -> torch.Tensor:
    """Mean next-token loss of one document (differentiable); it needs at least two tokens."""
    if len(token_ids) < 2:
        raise ValueError("a document needs at least two tokens to have a next-token loss")
    ids = torch.tensor([list(token_ids)[:max_length]], dtype=torch.long, device=model_device(model))
    sums, counts = token_loss_sums(lm_logits(model(**lm_inputs(model, ids))), ids)
    return sums[0] / counts[0]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half precision upcast for sums; float64 kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def per_example_gradients(
    model: torch.nn.Module, docs: Sequence[Sequence[int]], max_length: int = 512
) -> Grads:
    """Gradient of each document's mean token loss w.r.t. every trainable parameter, `{name: [n_docs, ...]}`.

    One batched `vmap(grad(...))` over `functional_call`, in eval mode. Attention runs on the math SDPA
    kernel, which has vmap batching rules (the fused kernels would fall back to a per-example loop). A
    document with fewer than two tokens has a zero gradient.
    """
    device = model_device(model)
    ids, labels = (t.to(device) for t in pad_documents(docs, max_length))
    params = {name: p.detach() for name, p in _trainable(model).items()}
    frozen = {name: p.detach() for name, p in model.named_parameters() if name not in params}
    frozen.update(dict(model.named_buffers()))

    def loss(p: Grads, one_ids: torch.Tensor, one_labels: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, frozen), args=(), kwargs=lm_inputs(model, one_ids.unsqueeze(0)))
        sums, counts = token_loss_sums(lm_logits(out), one_labels.unsqueeze(0))
        return sums[0] / counts[0].clamp(min=1)

    with eval_mode(model), sdpa_kernel(SDPBackend.MATH):
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, ids, labels)


def _reference_gradient(model: torch.nn.Module, batches: Sequence[Batch]) -> Grads:
    """Gradient of the token-weighted mean reference loss over all batches (`.grad` is left untouched)."""
    device = model_device(model)
    params = _trainable(model)
    total = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    if total == 0:
        raise ReferenceSetError("reference batches contain no answer tokens")
    out = {name: torch.zeros_like(p) for name, p in params.items()}
    for batch in batches:
        inputs = lm_inputs(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        sums, _ = token_loss_sums(lm_logits(model(**inputs)), batch["labels"].to(device))
        for acc, g in zip(out.values(), torch.autograd.grad(sums.sum() / total, list(params.values()))):
            acc += g
    return out


class CountSketch:
    """A seeded sparse random projection of gradients to `dim` dimensions (CountSketch / feature hashing).

    Coordinate `i` of parameter `name` adds `sign(i) * g[i]` to bucket `h(i)`, with `h` and `sign` drawn
    from a generator seeded by (seed, crc32(name)), so the projection is fixed for a seed whatever the
    parameter order or the chunking. It is unbiased for inner products (E<Sa, Sb> = <a, b>), has the
    Johnson-Lindenstrauss variance of a dense Gaussian projection, costs O(P) per gradient instead of
    O(P * dim), and never builds a [P x dim] matrix: the hashes of one parameter at a time are regenerated
    on the CPU for each call, keeping memory at O(largest parameter).
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError("projection_dim must be >= 1")
        self.dim = dim
        self.seed = seed

    def _hashes(self, name: str, numel: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        buckets = torch.randint(self.dim, (numel,), generator=gen)
        signs = torch.randint(2, (numel,), generator=gen, dtype=torch.int8) * 2 - 1
        return buckets.to(device), signs.to(device)

    def project(self, grads: Grads) -> torch.Tensor:
        """`{name: [n, ...]}` gradients -> [n, dim] float32 sketches."""
        first = next(iter(grads.values()))
        out = torch.zeros((first.shape[0], self.dim), dtype=torch.float32, device=first.device)
        for name, g in grads.items():
            flat = g.reshape(g.shape[0], -1).float()
            buckets, signs = self._hashes(name, flat.shape[1], flat.device)
            out.index_add_(1, buckets, flat * signs)
        return out


def gradient_rewards(
    model: torch.nn.Module,
    ref_batches_by_task: Mapping[str, Sequence[Batch]],
    docs: Sequence[Sequence[int]],
    *,
    max_length: int = 512,
    cosine: bool = False,
    projection_dim: int | None = None,
    seed: int = 0,
    chunk_size: int = 8,
    compute: Compute | None = None,
) -> np.ndarray:
    """`r[i, t] = <g_ref_t, g_i>`: [n_docs, n_tasks] first-order influence of each document on each task.

    `g_ref_t` is the gradient of task t's mean reference loss (computed once per call), `g_i` the gradient
    of document i's mean token loss, both at the current parameters in eval mode. Tasks keep the mapping's
    order. Documents are processed `chunk_size` at a time, shortest first (less padding), which bounds the
    per-example gradient memory at `chunk_size` copies of the trainable parameters. With `projection_dim`,
    both gradients are first projected by a seeded `CountSketch`; with `cosine`, the inner product is
    divided by both norms (0 where a gradient is zero). `compute`, if given, counts the work: forward and
    backward over each task's reference tokens and each document's first `max_length` tokens.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    tasks = list(ref_batches_by_task)
    out = np.zeros((len(docs), len(tasks)))
    norms = np.zeros(len(docs))
    sketch = CountSketch(projection_dim, seed) if projection_dim is not None else None
    per_token = FORWARD_BACKWARD * flop_params(model) if compute is not None else 0
    with eval_mode(model):
        refs = [_reference_gradient(model, ref_batches_by_task[t]) for t in tasks]
        if compute is not None:
            compute.add("reference", sum(batch_tokens(ref_batches_by_task[t]) for t in tasks), per_token)
        if sketch is not None:
            ref_sketch = torch.cat([sketch.project({n: g.unsqueeze(0) for n, g in r.items()}) for r in refs])
            ref_norms = ref_sketch.double().norm(dim=1)
        else:  # per parameter, the tasks' gradients stacked as [numel, n_tasks] for one matmul per chunk
            ref_cols = {n: torch.stack([_wide(r[n].reshape(-1)) for r in refs], dim=1) for n in refs[0]}
            ref_norms = sum(c.double().square().sum(0) for c in ref_cols.values()).sqrt()
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
        for start in range(0, len(order), chunk_size):
            rows = order[start : start + chunk_size]
            grads = per_example_gradients(model, [docs[i] for i in rows], max_length)
            if compute is not None:
                compute.add("probe", sum(min(len(docs[i]), max_length) for i in rows), per_token)
            if sketch is not None:
                vec = sketch.project(grads)
                dots, sq = (vec @ ref_sketch.T).double(), vec.double().square().sum(1) if cosine else None
            else:
                flat = {n: _wide(g.reshape(g.shape[0], -1)) for n, g in grads.items()}
                dots = sum((f @ ref_cols[n]).double() for n, f in flat.items())
                # Norms only matter for cosine: squaring every per-example gradient in float64 is not free.
                sq = sum(f.double().square().sum(1) for f in flat.values()) if cosine else None
            out[rows] = dots.cpu().numpy()
            if sq is not None:
                norms[rows] = sq.sqrt().cpu().numpy()
    if cosine:
        denom = norms[:, None] * ref_norms.cpu().numpy()[None, :]
        out = np.divide(out, denom, out=np.zeros_like(out), where=denom > 0)
    return out


class _TrainingState:
    """A bit-exact snapshot of parameters, buffers, `.grad` references, optimizer state and RNG."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.tensors = [t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()]
        self.values = [t.detach().clone() for t in self.tensors]
        self.grads = [(p, p.grad) for p in model.parameters()]  # a step assigns new grads, never edits these
        self.state = {
            p: {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()}
            for p, s in optimizer.state.items()
        }
        self.groups = [
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups
        ]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        """Put everything back as it was at construction; tensors are overwritten in place."""
        with torch.no_grad():
            for tensor, value in zip(self.tensors, self.values):
                tensor.copy_(value)
        for p, g in self.grads:
            p.grad = g
        state = self.optimizer.state
        for p in [p for p in state if p not in self.state]:
            del state[p]
        for p, saved in self.state.items():
            current = state[p]
            for k in [k for k in current if k not in saved]:
                del current[k]
            for k, v in saved.items():
                old = current.get(k)
                if (
                    torch.is_tensor(v)
                    and torch.is_tensor(old)
                    and old.shape == v.shape
                    and old.dtype == v.dtype
                ):
                    old.copy_(v)
                else:
                    current[k] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            group.update(copy.deepcopy(saved))
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def one_step_rewards(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    docs: Sequence[Sequence[int]],
    ref_batches_by_task: Mapping[str, Sequence[Batch]],
    *,
    max_length: int = 512,
    lr: float | None = None,
    compute: Compute | None = None,
) -> np.ndarray:
    """The MATES oracle, [n_docs, n_tasks]: `r = L_ref(before) - L_ref(after)` one optimizer step on each doc.

    Each step uses the optimizer's current learning rate (or `lr`), runs in eval mode (no dropout, so the
    reward is deterministic) and is undone exactly afterwards: parameters, buffers, gradients, optimizer
    state (step counts included), hyper-parameters and RNG state are bit-for-bit as before. No gradient
    clipping or scheduler step is applied. A document with fewer than two tokens gets 0. `compute`, if
    given, counts the work: forward and backward over each document's first `max_length` tokens (probe),
    and a forward pass over every task's reference tokens before the steps and after each (reference).
    """
    tasks = list(ref_batches_by_task)
    out = np.zeros((len(docs), len(tasks)))
    params = list(_trainable(model).values())
    n_params = flop_params(model) if compute is not None else 0
    ref_tokens = sum(batch_tokens(ref_batches_by_task[t]) for t in tasks)
    with eval_mode(model):
        before = np.array([reference_loss(model, ref_batches_by_task[t]) for t in tasks])
        if compute is not None:
            compute.add("reference", ref_tokens, FORWARD * n_params)
        snapshot = _TrainingState(model, optimizer)
        for i, doc in enumerate(docs):
            if len(doc) < 2:
                continue
            try:
                if lr is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                for p, g in zip(params, torch.autograd.grad(doc_loss(model, doc, max_length), params)):
                    p.grad = g
                optimizer.step()
                out[i] = before - np.array([reference_loss(model, ref_batches_by_task[t]) for t in tasks])
                if compute is not None:
                    compute.add("probe", min(len(doc), max_length), FORWARD_BACKWARD * n_params)
                    compute.add("reference", ref_tokens, FORWARD * n_params)
            finally:
                snapshot.restore()
    return out


def standardize(rewards: np.ndarray) -> np.ndarray:
    """[n_docs, n_tasks] -> [n_docs]: z-score each task over the round's probes, then average the tasks.

    A task whose rewards do not vary (or a round with one probe) contributes 0.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [n_docs, n_tasks], got shape {rewards.shape}")
    if rewards.size == 0:
        return np.zeros(rewards.shape[0])
    varies = np.ptp(rewards, axis=0) > 0  # exact: a constant column's std can round to a tiny non-zero
    std = rewards.std(axis=0)
    z = np.divide(rewards - rewards.mean(axis=0), std, out=np.zeros_like(rewards), where=varies & (std > 0))
    return z.mean(axis=1)
