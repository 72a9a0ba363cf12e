"""Compute accounting: the tokens and FLOPs a run spends on training, on reward probes, on reference
gradients and on held-out evaluation (docs/algorithm.md, "Compute counted").

FLOPs are estimated from the parameter count, not measured: a forward pass costs 2·N FLOPs per token and a
forward plus backward pass 6·N (Kaplan et al., 2020), with N = `flop_params(model)`. Attention's
context-length term and the optimizer's element-wise update are left out, as in that convention. Token
counts are the tokens a pass actually processes: padding is not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

FORWARD = 2  # FLOPs per parameter and token of a forward pass
FORWARD_BACKWARD = 6  # ... of a forward and a backward pass (the backward costs twice the forward)

Kind = Literal["train", "probe", "reference", "eval"]
#: The kinds of work that are cost (`eval` is reported, not charged).
COST_KINDS: tuple[Kind, ...] = ("train", "probe", "reference")
KINDS: tuple[Kind, ...] = (*COST_KINDS, "eval")


def flop_params(model: Any) -> int:
    """N of the 6·N·tokens rule: the model's parameters without the input embedding table, whose lookup
    costs no multiplications. The output projection is counted (a tied one once): it is a matmul on every
    token, and at the small vocabularies used here a large share of the model. A model without Hugging
    Face's `get_input_embeddings` leaves out every `nn.Embedding` table that no layer reuses as a weight."""
    import torch

    total = sum(p.numel() for p in model.parameters())  # a tied head is one parameter, counted once
    if hasattr(model, "get_input_embeddings"):
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is embedding
        return int(total - embedding.numel() + (embedding.numel() if tied else 0))
    tables = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    reused = {id(m.weight) for m in model.modules() if not isinstance(m, torch.nn.Embedding)
              and isinstance(getattr(m, "weight", None), torch.Tensor)}  # fmt: skip
    return int(total - sum(w.numel() for key, w in tables.items() if key not in reused))


def batch_tokens(batches: Any) -> int:
    """Tokens of padded reference batches (`attention_mask` is 1 on every real token)."""
    return sum(int(b["attention_mask"].sum()) for b in batches)


@dataclass
class Compute:
    """Tokens and FLOPs of each kind of work: training, the probes' per-example gradients (or one-step
    updates), the reference gradients and evaluations that rewards need, and held-out evaluation."""

    train_tokens: int = 0
    train_flops: float = 0.0
    probe_tokens: int = 0
    probe_flops: float = 0.0
    reference_tokens: int = 0
    reference_flops: float = 0.0
    eval_tokens: int = 0
    eval_flops: float = 0.0

    def add(self, kind: Kind, tokens: int, flops_per_token: float) -> None:
        """Count `tokens` of work of `kind` at `flops_per_token` (`FORWARD * N` or `FORWARD_BACKWARD * N`)."""
        setattr(self, f"{kind}_tokens", getattr(self, f"{kind}_tokens") + int(tokens))
        setattr(self, f"{kind}_flops", getattr(self, f"{kind}_flops") + float(tokens) * flops_per_token)

    def __add__(self, other: Compute) -> Compute:
        return Compute(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def total_flops(self) -> float:
        """The cost: training + probes + reference gradients (held-out evaluation excluded)."""
        return self.train_flops + self.probe_flops + self.reference_flops

    @property
    def probe_share(self) -> float:
        """The share of the cost spent measuring rewards (probes and reference gradients); 0 without cost."""
        total = self.total_flops
        return (self.probe_flops + self.reference_flops) / total if total else 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Compute:
        """Built from `to_dict`'s output; a missing kind counts 0 (state written before it was counted)."""
        cast = {"int": int, "float": float}  # the fields' annotations (strings under `annotations`)
        return cls(**{f.name: cast[str(f.type)](data.get(f.name, 0)) for f in fields(cls)})


__all__ = [
    "COST_KINDS",
    "FORWARD",
    "FORWARD_BACKWARD",
    "KINDS",
    "Compute",
    "batch_tokens",
    "flop_params",
]
