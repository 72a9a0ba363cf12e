"""Reference tasks: (prompt, answer) sets the model should get better at, their batches and their loss."""

from __future__ import annotations

import inspect
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from corpus_agents.config import ReferenceSpec
from corpus_agents.errors import CorpusAgentsError

IGNORE_INDEX = -100

Pair = tuple[str, str]
Batch = dict[str, torch.Tensor]


class ReferenceSetError(CorpusAgentsError):
    """A reference set cannot be loaded (missing file or dataset, bad template, no examples)."""


@dataclass
class ReferenceSet:
    """A loaded task: `probe` pairs steer the selection, disjoint `heldout` pairs evaluate it."""

    name: str
    probe: list[Pair]
    heldout: list[Pair]


def _template_columns(template: str) -> set[str]:
    """The top-level column names a format template reads (`"{a[x][0]} {b}"` -> {"a", "b"})."""
    names = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.add(field.split(".")[0].split("[")[0])
    return names


def _open_rows(spec: ReferenceSpec) -> tuple[int, list[str], Any]:
    """(row count, column names, take(indices) -> list of row dicts) of the spec's source."""
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ReferenceSetError(f"reference {spec.name!r}: no such Parquet file: {path}")
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ReferenceSetError(f"reference {spec.name!r}: cannot read {path}: {exc}") from exc
        return table.num_rows, table.column_names, lambda idx: table.take(idx).to_pylist()
    try:
        import datasets
    except ImportError as exc:
        raise ReferenceSetError(
            f"reference {spec.name!r}: loading a Hugging Face dataset needs the 'datasets' package "
            "(pip install datasets)"
        ) from exc
    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (network, missing config, ...)
        raise ReferenceSetError(
            f"reference {spec.name!r}: cannot load dataset {spec.dataset!r}: {exc}"
        ) from exc
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise ReferenceSetError(
                f"reference {spec.name!r}: dataset {spec.dataset!r} has splits {sorted(ds)}; set 'split'"
            )
        ds = next(iter(ds.values()))
    return ds.num_rows, list(ds.column_names), lambda idx: ds.select(idx).to_list()


def _format(spec: ReferenceSpec, template: str, row: dict[str, Any], index: int) -> str:
    try:
        return template.format(**row)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise ReferenceSetError(
            f"reference {spec.name!r}: template {template!r} fails on row {index}: {exc!r}"
        ) from exc


def load_reference(spec: ReferenceSpec, workspace: str | Path | None = None) -> ReferenceSet:
    """Load a task: a seeded sample of up to `max_examples` distinct pairs, split into probe and heldout.

    A named `task` or a `{workspace}` path is first resolved against `workspace` (`ReferenceSpec.resolved`).

    Rows are read in a seeded random order until `max_examples` distinct (prompt, answer) pairs are found
    (rows with an empty answer are skipped); the first `probe_fraction` of them (at least one) are the
    probe set, the rest the held-out set, so no pair is in both.
    """
    spec = spec.resolved(workspace)
    num_rows, columns, take = _open_rows(spec)
    for template in (spec.prompt, spec.answer):
        absent = sorted(_template_columns(template) - set(columns))
        if absent:
            raise ReferenceSetError(
                f"reference {spec.name!r}: template {template!r} names missing columns {absent} "
                f"(columns: {columns})"
            )
    if num_rows == 0:
        raise ReferenceSetError(f"reference {spec.name!r}: the set has no rows")
    order = np.random.default_rng(spec.seed).permutation(num_rows).tolist()
    pairs: dict[Pair, None] = {}  # insertion-ordered set: a duplicate row must not land on both sides
    start = 0
    while len(pairs) < spec.max_examples and start < num_rows:  # rows in seeded random order until enough
        indices = order[start : start + spec.max_examples - len(pairs)]
        start += len(indices)
        for i, row in zip(indices, take(indices)):
            answer = _format(spec, spec.answer, row, i)
            if answer:
                pairs[(_format(spec, spec.prompt, row, i), answer)] = None
    if not pairs:
        raise ReferenceSetError(f"reference {spec.name!r}: no example has a non-empty answer")
    unique = list(pairs)  # already in random order
    n_probe = min(len(unique), max(1, round(spec.probe_fraction * len(unique))))
    return ReferenceSet(
        name=spec.name,
        probe=unique[:n_probe],
        heldout=unique[n_probe:],
    )


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padding is always masked, so the value is moot)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def encode_examples(
    tokenizer: Any, pairs: Sequence[Pair], max_length: int = 512, batch_size: int = 16
) -> list[Batch]:
    """Tokenise (prompt, answer) pairs into right-padded batches whose labels count answer tokens only.

    Prompt and answer are encoded separately without special tokens and concatenated. If the pair exceeds
    `max_length` the prompt is cut from the left; an answer longer than `max_length - 1` is cut from the
    right, so at least one token of context precedes it. Labels are the input ids on answer tokens and
    -100 on prompt tokens and padding (unshifted, as in Hugging Face models).
    """
    if max_length < 2:
        raise ValueError("max_length must be >= 2")
    pad = pad_token_id(tokenizer)
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    answers = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    sequences = []
    for prompt, answer in zip(prompts, answers):
        answer = answer[: max_length - 1]
        prompt = prompt[max(0, len(prompt) + len(answer) - max_length) :]
        sequences.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (seq, lab) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            labels[row, : len(lab)] = torch.tensor(lab, dtype=torch.long)
            mask[row, : len(seq)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def _accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward takes keyword `name` (by name or through **kwargs)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a builtin or C forward: assume the Hugging Face signature
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def lm_inputs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> dict[str, Any]:
    """Keyword arguments for a causal LM call: `input_ids`, the `attention_mask` if the model's forward takes
    one (batches here are right-padded, so a causal model that takes none still sees every real token right),
    and no KV cache for a model whose config uses one (it is never reused here)."""
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    if attention_mask is not None and _accepts(model, "attention_mask"):
        kwargs["attention_mask"] = attention_mask
    if getattr(getattr(model, "config", None), "use_cache", False):
        kwargs["use_cache"] = False
    return kwargs


def lm_logits(output: Any) -> torch.Tensor:
    """The [batch, seq, vocab] logits of a causal LM's output: an object with `.logits` (Hugging Face), a
    mapping with "logits", a tuple whose first tensor is them, or the logits tensor itself."""
    if torch.is_tensor(output):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if logits is None and isinstance(output, tuple) and output and torch.is_tensor(output[0]):
        logits = output[0]
    if not torch.is_tensor(logits):
        raise TypeError(
            f"the model returned {type(output).__name__}: expected logits, or an output with .logits"
        )
    return logits


def token_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of next-token losses over labelled positions, and their count (float), shifting by one.

    Written with gather and a mask (no `ignore_index`) so that it also runs under `torch.func.vmap`.
    """
    targets = labels[..., 1:]
    mask = targets != IGNORE_INDEX
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision upcast, float64 kept
    logp = torch.log_softmax(logits[..., :-1, :].to(dtype), dim=-1)
    nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * mask).sum(-1), mask.sum(-1).to(nll.dtype)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every submodule in eval mode (no dropout) inside the block; each one's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def reference_loss(model: torch.nn.Module, batches: Iterable[Batch]) -> float:
    """Mean loss per answer token over all batches (token-weighted), in eval mode and without gradients."""
    device = model_device(model)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            labels = batch["labels"].to(device)
            inputs = lm_inputs(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            sums, counts = token_loss_sums(lm_logits(model(**inputs)), labels)
            total += sums.sum().double()
            count += counts.sum().double()
    if count.item() == 0:
        raise ReferenceSetError("reference batches contain no answer tokens")
    return (total / count).item()
