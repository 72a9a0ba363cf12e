"""Hugging Face sequence-classification agent: a regression score (FineWeb-Edu style) or class probabilities."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from corpus_agents.config import ConfigError, bounded, key_path
from corpus_agents.errors import one_line
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
    bin_labels,
    check_bins,
    digitize,
)
from corpus_agents.scoring.corpus import DocBatch

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Default bins of a regression head: the 0-5 educational-value scale of the FineWeb-Edu classifier.
REGRESSION_BINS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
#: Default bins of a class probability (`label` option).
PROBABILITY_BINS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
#: Texts are cut at a space before this many characters per token of `max_length` before tokenising, so a
#: 200k-character page costs no more than a normal one. Cutting at a space keeps every earlier word intact, so
#: the first `max_length` tokens are unchanged; a text that still comes out shorter is tokenised in full.
CUT_CHARS_PER_TOKEN = 16
#: Documents per tokenisation chunk (chunk i+1 is tokenised while the model runs chunk i): big enough for
#: several full sub-batches, small enough that the first chunk, which nothing overlaps, starts the model soon.
CHUNK_DOCS = 256
#: Weight formats that AutoModelForSequenceClassification never reads, left out of hub snapshots.
HUB_IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.ot", "*.tflite", "*.onnx*", "onnx/*", "openvino/*"]


@dataclass
class LoadedClassifier:
    """What `load_model` returns: the tokenizer and model, and where and in which dtype the model runs."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    device: torch.device
    dtype: torch.dtype


@dataclass
class HFClassifierOptions(AgentOptions):
    model: str  # a local model directory or a hub name (pinned to the snapshot it was added with)
    label: str | None = None  # the class whose probability is the score (binned into labels by `bins`)
    bins: list[float] | None = None  # bin edges of the score (regression default 0,1,...,5)
    max_length: int = bounded(512, gt=0)  # truncation in tokens
    batch_tokens: int = bounded(16384, gt=0)  # padded tokens per forward pass
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False  # allow the model's own modelling code to run

    def validate(self, where: str) -> None:
        if not self.model.strip():
            raise ConfigError(f"{key_path(where, 'model')} is empty")
        check_bins(self.bins, key_path(where, "bins"))


class HFClassifierAgent(Agent):
    """Scores documents with an AutoModelForSequenceClassification checkpoint.

    Three modes, chosen from the model head and the `label` option when the agent is created:
    - "regression" (num_labels == 1, e.g. HuggingFaceFW/fineweb-edu-classifier): score = the raw output,
      label = its bin (values outside the bins clamp into the end bins);
    - "argmax" (classifier, no `label`): label = the predicted class, score = its probability;
    - "probability" (classifier, `label=X`): score = the probability of class X, label = its bin.

    Config keys: model (absolute directory or hub name), revision (hub commit the agent is pinned to, None for
    a local directory), mode, label, class_index, num_labels, bins, labels, max_length, batch_tokens, dtype,
    device, trust_remote_code.
    """

    kind = "hf-classifier"
    requires = {"torch": "torch", "transformers": "transformers"}
    extra = "hf"
    uses_gpu = True
    runtime_keys = frozenset({"batch_tokens", "device"})
    options_type = HFClassifierOptions

    @classmethod
    def create(
        cls, name: str, options: HFClassifierOptions | Mapping[str, Any], context: AgentContext
    ) -> HFClassifierAgent:
        """Read the model's config (only the config: weights load lazily) to pick the mode and labels."""
        options = HFClassifierOptions.of(options)
        model, label, bins = options.model, options.label, options.bins
        trust_remote_code = options.trust_remote_code
        model_ref, revision = _locate_model(model)
        hf_config = _load_hf_config(model_ref, revision, trust_remote_code)

        num_labels = int(hf_config.num_labels)
        class_names = [str(hf_config.id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
        class_index = None
        if num_labels == 1:
            if label:
                raise AgentError(f"--label needs a classification model; {model} is a regression model")
            mode, edges = "regression", bins or REGRESSION_BINS
        elif not label:
            if bins:
                raise AgentError(f"--bins needs --label: {model} is a classifier, labelled by its top class")
            mode, edges = "argmax", None
        elif label in class_names:
            mode, edges = "probability", bins or PROBABILITY_BINS
            class_index = class_names.index(label)
        else:
            raise AgentError(f"{model} has no class {label!r}; its classes: {', '.join(class_names)}")

        max_length = options.max_length
        positions = getattr(hf_config, "max_position_embeddings", None)
        if positions and max_length > positions:
            raise AgentError(f"--max-length {max_length} exceeds the {positions} positions of {model}")
        return cls(
            name,
            {
                "model": model_ref,
                "revision": revision,
                "mode": mode,
                "label": label if mode == "probability" else None,
                "class_index": class_index,
                "num_labels": num_labels,
                "bins": edges,
                "labels": class_names if edges is None else bin_labels(edges),
                "max_length": max_length,
                "batch_tokens": options.batch_tokens,
                "dtype": options.dtype,
                "device": options.device,
                "trust_remote_code": trust_remote_code,
            },
        )

    def model_files(self) -> list[str]:
        """The model directory (a hub model's snapshot), so the fingerprint covers weights and tokenizer."""
        return [self._model_dir()]

    def _model_dir(self) -> str:
        """The local directory holding the model: the configured one, or the pinned hub snapshot (downloaded
        on first use unless the cache already has it or HF_HUB_OFFLINE is set)."""
        if self.config["revision"] is None:
            return self.config["model"]
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(
                self.config["model"], revision=self.config["revision"], ignore_patterns=HUB_IGNORE_PATTERNS
            )
        except (OSError, ValueError) as exc:
            raise AgentError(
                f"agent {self.name!r}: hub model {self.config['model']} (revision {self.config['revision']}) "
                f"is not available locally and cannot be downloaded: {one_line(exc)}"
            ) from exc

    def load_model(self) -> LoadedClassifier:
        """Tokenizer and model in eval mode, on CUDA when available (unless device=cpu), in the configured dtype
        (auto: bf16 on CUDA, fp32 on CPU)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        cuda = torch.cuda.is_available()
        if self.config["device"] == "cuda" and not cuda:
            raise AgentError(f"agent {self.name!r}: device=cuda but no CUDA device is available")
        device = torch.device("cuda" if cuda and self.config["device"] != "cpu" else "cpu")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
            self.config["dtype"], torch.bfloat16 if device.type == "cuda" else torch.float32
        )
        path = self._model_dir()
        trust = self.config["trust_remote_code"]
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust
            )
        except (OSError, ValueError) as exc:
            raise AgentError(f"agent {self.name!r}: cannot load model {path}: {one_line(exc)}") from exc
        if model.config.num_labels != self.config["num_labels"]:
            raise AgentError(
                f"agent {self.name!r}: model {path} now has {model.config.num_labels} outputs, "
                f"{self.config['num_labels']} when the agent was added; add the agent again"
            )
        return LoadedClassifier(tokenizer, model.to(device).eval(), device, dtype)

    def score(self, batch: DocBatch) -> ScoreResult:
        """Labels and scores of the batch per the agent's mode (label -1 and score NaN if the model gives NaN)."""
        logits = self._logits(batch.texts)
        mode = self.config["mode"]
        if mode == "regression":
            scores = logits[:, 0]
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            scores = probs.max(axis=1) if mode == "argmax" else probs[:, self.config["class_index"]]
        if mode == "argmax":
            labels = np.where(np.isnan(scores), -1, logits.argmax(axis=1)).astype(np.int32)
        else:
            labels = digitize(scores, self.config["bins"])
        return ScoreResult(labels=labels, scores=scores.astype(np.float32))

    def _logits(self, texts: list[str]) -> np.ndarray:
        """Model outputs (documents x num_labels, float32) in document order; NaN rows for documents that
        produce no tokens.

        Documents run longest first in padded sub-batches of at most `batch_tokens` tokens. They are sorted
        by (cut) character length and split into chunks of `CHUNK_DOCS`; a background thread tokenises, pads
        (and on CUDA pins) chunk i+1 while the model runs chunk i, and each chunk's outputs come back in one
        asynchronous copy that is waited for only once the next chunk is queued, so that past the first
        chunk the GPU need not wait for the tokenizer or for a copy.
        """
        import torch

        loaded = self.model
        logits = np.full((len(texts), self.config["num_labels"]), np.nan, dtype=np.float32)
        if not texts:
            return logits
        cuda = loaded.device.type == "cuda"
        autocast = (
            torch.autocast("cuda", dtype=loaded.dtype)
            if cuda and loaded.dtype != torch.float32
            else contextlib.nullcontext()
        )
        limit = self.config["max_length"] * CUT_CHARS_PER_TOKEN
        chars = np.fromiter((min(len(t), limit) for t in texts), dtype=np.int64, count=len(texts))
        order = np.argsort(-chars, kind="stable")
        chunks = [order[i : i + CHUNK_DOCS] for i in range(0, len(order), CHUNK_DOCS)]
        pending: tuple[np.ndarray, Any, Any] | None = None  # a chunk's rows, host outputs, copy-done event
        with (
            ThreadPoolExecutor(1, thread_name_prefix="hf-tokenize") as pool,
            torch.inference_mode(),
            autocast,
        ):
            prepared = pool.submit(self._prepare_chunk, loaded.tokenizer, texts, chunks[0], cuda)
            for i in range(len(chunks)):
                sub_batches = prepared.result()
                if i + 1 < len(chunks):
                    prepared = pool.submit(self._prepare_chunk, loaded.tokenizer, texts, chunks[i + 1], cuda)
                if not sub_batches:
                    continue
                outputs = [
                    loaded.model(
                        **{k: t.to(loaded.device, non_blocking=True) for k, t in tensors.items()}
                    ).logits
                    for _, tensors in sub_batches
                ]
                done = _outputs_to_host(torch.cat(outputs), cuda)
                if pending is not None:
                    _fill(logits, *pending)
                pending = (np.concatenate([rows for rows, _ in sub_batches]), *done)
            if pending is not None:
                _fill(logits, *pending)
        return logits

    def _prepare_chunk(
        self, tokenizer: PreTrainedTokenizerBase, texts: list[str], rows: np.ndarray, pin: bool
    ) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """The chunk's documents tokenised and cut into padded sub-batches, longest first, each at most
        `batch_tokens` tokens (one document per sub-batch if the tokenizer has no pad token): a list of
        (document rows, tensors by model input name). Documents without tokens are left out."""
        import torch

        encoded = self._tokenize(tokenizer, [texts[i] for i in rows])
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        order = order[lengths[order] > 0]
        pad_values = {
            "input_ids": tokenizer.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": tokenizer.pad_token_type_id,
            "special_tokens_mask": 1,
        }
        left = tokenizer.padding_side == "left"
        budget = self.config["batch_tokens"] if tokenizer.pad_token_id is not None else 0
        sub_batches = []
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])  # longest first: the first document sets the width
            take = order[start : start + max(1, budget // width)]
            start += len(take)
            columns = np.arange(width)
            filled = columns >= width - lengths[take, None] if left else columns < lengths[take, None]
            tensors = {}
            for key, values in encoded.items():
                padded = np.full((len(take), width), pad_values.get(key) or 0, dtype=np.int64)
                flat = itertools.chain.from_iterable(values[j] for j in take)
                padded[filled] = np.fromiter(flat, dtype=np.int64, count=int(lengths[take].sum()))
                tensor = torch.from_numpy(padded)
                tensors[key] = tensor.pin_memory() if pin else tensor
            sub_batches.append((rows[take], tensors))
        return sub_batches

    def _tokenize(self, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids (and masks) of every text, truncated to `max_length` tokens, without padding."""
        max_length = self.config["max_length"]
        limit = max_length * CUT_CHARS_PER_TOKEN
        cut = [_cut_at_space(text, limit) for text in texts]
        encoded = dict(tokenizer(cut, truncation=True, max_length=max_length))
        ids = encoded["input_ids"]
        redo = [i for i, text in enumerate(texts) if len(cut[i]) < len(text) and len(ids[i]) < max_length]
        if redo:
            full = tokenizer([texts[i] for i in redo], truncation=True, max_length=max_length)
            for key, values in encoded.items():
                for i, value in zip(redo, full[key]):
                    values[i] = value
        return encoded


def _outputs_to_host(outputs: torch.Tensor, cuda: bool) -> tuple[Any, Any]:
    """(float32 host array or pinned tensor, event marking the copy's end or None): on CUDA the copy is queued
    behind the model and not waited for, so the caller can queue the next chunk first."""
    import torch

    outputs = outputs.float()
    if not cuda:
        return outputs.numpy(), None
    host = torch.empty(outputs.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(outputs, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _fill(logits: np.ndarray, rows: np.ndarray, host: Any, event: Any) -> None:
    """Write a chunk's outputs into their documents' rows, once their copy to the host is done."""
    if event is not None:
        event.synchronize()
        host = host.numpy()
    logits[rows] = host


def _cut_at_space(text: str, limit: int) -> str:
    """`text` cut at its last space before `limit` characters (unchanged if shorter or without such a space)."""
    if len(text) <= limit:
        return text
    space = text.rfind(" ", 0, limit)
    return text[:space] if space > 0 else text


def _locate_model(model: str) -> tuple[str, str | None]:
    """(absolute directory, None) for a local model, (hub name, commit) for a hub model: the commit pins the
    agent to the snapshot it was added with, so the fingerprint and the scores stay reproducible."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), None
    if path.exists():
        raise AgentError(f"model {model} is not a directory")
    if path.is_absolute() or model.startswith((".", "~")):
        raise AgentError(f"model directory {model} does not exist")
    from huggingface_hub import hf_hub_download

    try:
        config_file = hf_hub_download(model, "config.json")
    except (OSError, ValueError) as exc:
        raise AgentError(
            f"model {model} is neither a local directory nor a hub model available here: {one_line(exc)}"
        ) from exc
    return model, Path(config_file).parent.name  # the cache layout is <repo>/snapshots/<commit>/config.json


def _load_hf_config(model: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The model's transformers config (num_labels, id2label), or a one-line AgentError."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read the config of model {model}: {one_line(exc)}") from exc
