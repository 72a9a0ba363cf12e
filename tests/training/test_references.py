"""Reference tasks: loading (shared sets, seeded disjoint split, errors), answer-only labels, the loss; named
tasks (shipped samples, `references build` offline and from a stand-in hub, a `train` that names them)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
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
from corpus_agents.training import reference_sets
from corpus_agents.training.references import (
    IGNORE_INDEX,
    ReferenceSetError,
    ReferenceSpec,
    encode_examples,
    load_reference,
    reference_loss,
)

SHARED = Path(os.environ.get("CORPUS_AGENTS_SHARED", Path(__file__).resolve().parents[3] / "shared"))
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


# ----- named tasks: shipped samples, `references build`, resolution ---------------------------------------
REPO = Path(__file__).resolve().parents[2]


def test_shipped_samples_have_the_task_layout_and_attribution() -> None:
    for name, spec in reference_sets.TASKS.items():
        if not spec.redistributable:
            assert spec.sample is None  # jeopardy: its licence does not allow a copy in the package
            continue
        table = pq.read_table(spec.sample)
        assert table.schema.remove_metadata() == spec.schema and 32 <= table.num_rows <= 100, name
        ref = load_reference(ReferenceSpec.from_dict({"task": name}))  # no workspace: the sample
        assert ref.name == name and ref.probe and ref.heldout
        assert (spec.prompt, spec.answer) == SHARED_TEMPLATES[name]
    attribution = (reference_sets.SAMPLE_DIR / "README.md").read_text()
    for needle in ("CC BY 4.0", "CC BY-SA 4.0", "Paperno", "Rajpurkar", "J! Archive", "seed 0"):
        assert needle in attribution


@pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason=f"no shared reference data at {REFERENCE_DIR}")
@pytest.mark.parametrize("name", list(SHARED_TEMPLATES))
def test_task_layout_equals_the_shared_sets(name: str) -> None:
    """The layout `references build` writes is the one of the paper's sets; the samples are rows of them."""
    shared = pq.read_table(REFERENCE_DIR / f"{name}.parquet")
    spec = reference_sets.TASKS[name]
    assert shared.schema.remove_metadata() == spec.schema
    if spec.sample is not None:
        rows = {repr(r) for r in shared.to_pylist()}
        assert all(repr(r) in rows for r in pq.read_table(spec.sample).to_pylist())


def test_named_task_resolves_to_the_built_set_else_the_sample(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    spec = ReferenceSpec.from_dict({"task": "squad", "max_examples": 10}).resolved(ws)
    assert Path(spec.path) == reference_sets.TASKS["squad"].sample and spec.name == "squad"
    assert spec.prompt == SHARED_TEMPLATES["squad"][0] and spec.max_examples == 10
    built = ws / "references" / "squad.parquet"
    built.parent.mkdir()
    row = {"id": "1", "title": "T", "context": "the cat sat", "question": "who sat", "answers": {"text": ["the cat"], "answer_start": [0]}}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([row], schema=reference_sets.TASKS["squad"].schema), built)
    spec = ReferenceSpec.from_dict({"task": "squad", "name": "sq", "answer": "{answers[text][0]}"}).resolved(
        ws
    )
    assert Path(spec.path) == built and spec.name == "sq" and spec.answer == "{answers[text][0]}"
    assert load_reference(spec).probe == [("the cat sat\nQuestion: who sat\nAnswer:", "the cat")]
    with pytest.raises(ReferenceSetError, match=r"references build .*ws/references --tasks jeopardy"):
        ReferenceSpec.from_dict({"task": "jeopardy"}).resolved(ws)
    with pytest.raises(
        ConfigError, match=r"reference.task must be one of lambada, squad, jeopardy, got 'lamb'"
    ):
        ReferenceSpec.from_dict({"task": "lamb"}).resolved(ws)
    with pytest.raises(ConfigError, match="one of 'task', 'path' or 'dataset'"):
        ReferenceSpec.from_dict({"task": "squad", "path": str(built)}).resolved(ws)
    spec = ReferenceSpec.from_dict({"name": "x", "path": "{workspace}/a.parquet", "prompt": "{q}", "answer": "{a}"}).resolved(ws)  # fmt: skip
    assert spec.path == f"{ws}/a.parquet"
    with pytest.raises(ReferenceSetError, match="needs a workspace"):
        ReferenceSpec.from_dict(
            {"name": "x", "path": "{workspace}/a.parquet", "prompt": "{q}", "answer": "{a}"}
        ).resolved()


def cli_offline(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, offline and with empty Hugging Face caches (so nothing can be cached)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(cwd / "hf-home"),
        "HF_DATASETS_CACHE": str(cwd / "hf-datasets"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "corpus_agents.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_build_offline_falls_back_to_the_shipped_samples(tmp_path: Path) -> None:
    out = tmp_path / "refs"
    proc = cli_offline(tmp_path, "references", "build", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fallbacks = [line for line in proc.stdout.splitlines() if "wrote the shipped sample" in line]
    assert [line.split(":")[0] for line in fallbacks] == ["lambada", "squad"]
    manifest = json.loads((out / "references.json").read_text())
    assert sorted(manifest) == ["lambada", "squad"]
    for name, entry in manifest.items():
        spec = reference_sets.TASKS[name]
        table = pq.read_table(out / entry["file"])
        assert table.schema.remove_metadata() == spec.schema
        assert table.equals(pq.read_table(spec.sample).cast(spec.schema))
        assert entry["built_from"] == "sample" and entry["licence"] == spec.licence
        assert entry["source"]["dataset"] == spec.dataset and entry["rows"] == table.num_rows
        assert entry["source"]["revision"] is None  # a sample has no hub revision of its own

    explicit = cli_offline(tmp_path, "references", "build", str(out), "--tasks", "squad", "--source", "hub")
    assert explicit.returncode == 2 and explicit.stderr.count("\n") == 1
    assert explicit.stderr.startswith("error: squad: cannot load rajpurkar/squad")
    jeopardy = cli_offline(tmp_path, "references", "build", str(out), "--tasks", "jeopardy")
    assert jeopardy.returncode == 2 and "no sample ships" in jeopardy.stderr
    assert not (out / "jeopardy.parquet").exists() and sorted(json.loads((out / "references.json").read_text())) == ["lambada", "squad"]  # fmt: skip


def test_build_from_the_hub_maps_each_source_to_the_task_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`datasets.load_dataset` replaced by in-memory datasets in the hub's layouts: the real mapping runs."""
    import datasets

    squad_features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(
                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
            ),
        }
    )
    sources = {
        "json": datasets.Dataset.from_dict(
            {"text": ["He looked at the\nold  map", "one", "She opened the door"]}
        ),
        "rajpurkar/squad": datasets.Dataset.from_dict(
            {
                "id": ["a1"],
                "title": ["Cats"],
                "context": ["The cat sat on the mat."],
                "question": ["Where did the cat sit?"],
                "answers": [{"text": ["on the mat", "the mat"], "answer_start": [12, 15]}],
            },
            features=squad_features,
        ),
        "soldni/jeopardy": datasets.Dataset.from_dict(
            {
                "context": ["SCIENCE: This gas makes up most of the air", ""],
                "continuation": ["nitrogen", "x"],
                "category": ["science", "science"],
                "air_date": ["2004-12-31", "2005-01-01"],
            }
        ),
    }
    calls: list[dict] = []

    def fake_load_dataset(**kwargs):
        calls.append(kwargs)
        return sources[kwargs["path"]]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "references"
    written = reference_sets.build(out, ["lambada", "squad", "jeopardy"], "hub", echo=lambda _: None)

    lambada_file = "hf://datasets/EleutherAI/lambada_openai@879e19a2c9bb7ef03f9cf962089cf7d008f91e27/data/lambada_test.jsonl"  # fmt: skip
    assert calls == [
        {"path": "json", "data_files": {"test": lambada_file}, "split": "test"},
        {"path": "rajpurkar/squad", "name": "plain_text", "split": "validation"},
        {"path": "soldni/jeopardy", "name": "mosaicml_gauntlet", "split": "train"},
    ]
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in written}
    for name, table in tables.items():
        assert table.schema.remove_metadata() == reference_sets.TASKS[name].schema
    assert tables["lambada"].to_pylist() == [
        {"text": "He looked at the\nold  map", "until_last": "He looked at the old", "last_word": "map"},
        {"text": "She opened the door", "until_last": "She opened the", "last_word": "door"},
    ]  # a one-word passage has no context and is dropped
    assert tables["squad"].to_pylist() == [sources["rajpurkar/squad"].to_list()[0]]
    assert tables["jeopardy"].to_pylist() == [
        {
            "context": "SCIENCE: This gas makes up most of the air",
            "continuation": "nitrogen",
            "category": "science",
        }
    ]
    manifest = json.loads((out / "references.json").read_text())
    assert manifest["lambada"]["source"]["revision"] == "879e19a2c9bb7ef03f9cf962089cf7d008f91e27"
    assert manifest["squad"]["source"]["revision"].startswith("main")  # in-memory: no cached commit
    assert {e["built_from"] for e in manifest.values()} == {"hub"}
    assert manifest["jeopardy"]["licence"] == reference_sets.TASKS["jeopardy"].licence
    for name in written:  # the built files load with the task's templates
        load_reference(ReferenceSpec.from_dict({"task": name}).resolved(tmp_path))

    sources["rajpurkar/squad"] = sources["rajpurkar/squad"].remove_columns("title")
    with pytest.raises(reference_sets.ReferenceBuildError, match=r"no columns \['title'\]"):
        reference_sets.build(out, ["squad"], "hub", echo=lambda _: None)


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_train_with_a_pipeline_naming_reference_tasks_from_a_bare_clone(
    tmp_path: Path, scored_workspace
) -> None:
    """`references build` (offline: the samples) then `train` with pipelines/reference-tasks.yaml copied into
    an otherwise empty directory: nothing outside the workspace and the package is read."""
    ws = scored_workspace(tmp_path, 20)
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "pipelines", clone / "pipelines")
    built = cli_offline(clone, "references", "build", str(ws / "references"))
    assert built.returncode == 0, built.stdout + built.stderr
    tiny = [
        "model.seq_len=64", "model.overrides={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
        "num_attention_heads: 2, num_key_value_heads: 1}", "tokenizer.vocab_size=512", "tokenizer.sample_docs=200",
        "train.steps=4", "train.batch_size=2", "train.warmup_steps=1", "train.log_every=2", "rounds.every=2",
        "rewards.max_tokens=32", "console.probes_per_label=2", "console.agents=[domain, kind]", "rounds.oversample=4",
    ]  # fmt: skip
    args = ["train", str(ws), "--pipeline", "pipelines/reference-tasks.yaml", "--run", "paper-tasks"]
    proc = cli_offline(clone, *args, *[a for item in tiny for a in ("--set", item)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [
        json.loads(line) for line in (ws / "runs" / "paper-tasks" / "log.jsonl").read_text().splitlines()
    ]
    final = [r for r in records if "heldout_loss" in r][-1]
    assert sorted(final["heldout_loss"]) == ["lambada", "squad"]
    assert all(math.isfinite(v) and v > 0 for v in final["heldout_loss"].values())
