"""Paper-scale training data: released completions, per-domain prompt counts, sharded responses.

Released completions (``targets.<name>.train_completions``) are read from small local files
with the LK release's schema (``conversation: [{role, content}]``, ``generated_message: {role,
content}``) and must come out as the rows the ``responses`` stage writes. Sharded regeneration
(``data.response_shard_prompts``) must give the rows of the unsharded job where the seeds allow
(one shard) and always the same prompts and global ``prompt_index``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from tiny import save_tiny_chat_target

from specbench.config import ConfigError, load_config
from specbench.data.generate import chat_prompt_ids
from specbench.jobs import Job, launch
from specbench.targets.loading import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {
    "train": ["Name three rivers.", "What is a list?", "Count to five.", "Say hello.", "Why?"],
    "eval": ["Describe the sea.", "Why is the sky blue?"],
}


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template."""
    return save_tiny_chat_target(tmp_path_factory.mktemp("tiny_target") / "model", layers=1)


@pytest.fixture(scope="module")
def tok(target):
    return load_tokenizer(str(target))


def released(prompt, response, role="user"):
    """One row of the LK release's schema."""
    conversation = [] if prompt is None else [{"role": role, "content": prompt}]
    message = None if response is None else {"role": "assistant", "content": response}
    return {"conversation": conversation, "generated_message": message}


LONG = " ".join(["word"] * 60)
ROWS = [
    released(" Name three rivers.\n", "Nile, Amazon, Danube."),
    released("What is a list?", ""),  # no response text: skipped
    released(None, "an answer to nothing"),  # no prompt: skipped
    released("Describe the sea.", "Blue and wide."),  # an eval prompt: skipped
    released("Count to five.", None),  # no generated message: skipped
    released("Name three rivers.", "Again?"),  # a repeated prompt: skipped
    released("Write a long text.", LONG),  # cut to max_new_tokens
    released("Say hello.", "Hello!"),
]


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def completions(**kw):
    from specbench.data.hub import CompletionsSource

    return CompletionsSource(**kw)


def read(tok, source, n=10, max_prompt=64, max_new=24, exclude=PROMPTS["eval"]):
    from specbench.data.completions import CompletionStats, completion_rows

    stats = CompletionStats()
    rows = [asdict(r) for r in completion_rows(source, tok, n, max_prompt, max_new, exclude, stats)]
    return rows, stats


def test_released_rows_come_out_in_the_responses_format(hub, tmp_path, tok):
    src = completions(dataset=write_rows(tmp_path / "llama.jsonl", ROWS))
    assert src.field == "conversation[0].content"  # the release's schema is the default
    rows, stats = read(tok, src)
    assert [r["prompt_index"] for r in rows] == [0, 1, 2]
    assert (stats.rows, stats.kept, stats.no_prompt, stats.no_response) == (8, 3, 1, 2)
    assert (stats.eval_prompt, stats.repeated, stats.cut_responses) == (1, 1, 1)
    eos = tok.eos_token_id
    for row, (prompt, text) in zip(
        rows, [("Name three rivers.", "Nile, Amazon, Danube."), ("Write a long text.", LONG),
               ("Say hello.", "Hello!")], strict=True
    ):  # fmt: skip
        assert list(row) == ["prompt_index", "prompt_ids", "response_ids", "lookahead_ids"]
        assert row["prompt_ids"] == chat_prompt_ids(tok, prompt, 64)  # stripped, templated
        ids = tok(text, add_special_tokens=False)["input_ids"] + [eos]
        assert row["response_ids"] == ids[:24] and row["lookahead_ids"] == []
    assert rows[0]["response_ids"][-1] == eos and len(rows[1]["response_ids"]) == 24
    assert eos not in rows[1]["response_ids"]  # cut before its end, as generation would be


def test_response_ends_with_the_eos_of_the_chat_templates_assistant_turn(hub, tmp_path, tok):
    """prompt_ids + response_ids is the templated two-turn chat up to its end-of-turn token."""
    src = completions(dataset=write_rows(tmp_path / "c.jsonl", [ROWS[0]]))
    (row,), _ = read(tok, src, max_new=100)
    chat = [
        {"role": "user", "content": "Name three rivers."},
        {"role": "assistant", "content": "Nile, Amazon, Danube."},
    ]
    full = tok.apply_chat_template(chat, tokenize=True)
    full = full if isinstance(full, list) else full["input_ids"]
    ours = row["prompt_ids"] + row["response_ids"]
    assert full[: len(ours)] == ours


def test_released_rows_are_deterministic_capped_and_the_same_from_parquet(hub, tmp_path, tok):
    src = completions(dataset=write_rows(tmp_path / "c.jsonl", ROWS))
    first, _ = read(tok, src)
    assert read(tok, src)[0] == first
    capped, stats = read(tok, src, n=2)
    assert capped == first[:2] and stats.kept == 2
    parquet = tmp_path / "c.parquet"
    hub.Dataset.from_list(ROWS).to_parquet(str(parquet))
    assert read(tok, completions(dataset=str(parquet)))[0] == first
    shuffled = completions(dataset=str(parquet), shuffle_seed=1)
    again, _ = read(tok, shuffled)
    assert again == read(tok, shuffled)[0]
    assert sorted(map(str, again)) != sorted(map(str, first)) or again == first  # a permutation
    assert len(again) == 3


def test_other_field_paths_and_chat_columns(hub, tmp_path, tok):
    """Paths into nested cells, a chat column's first user turn, OpenAI content parts."""
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi"}],
         "out": {"choices": [{"text": [{"type": "text", "text": "Hello"}]}]}},
        {"messages": [{"role": "user", "content": "Yo"}], "out": {"choices": []}},
    ]  # fmt: skip
    src = completions(
        dataset=write_rows(tmp_path / "c.jsonl", rows),
        field="messages",
        response_field="out.choices[0].text",
    )
    got, stats = read(tok, src)
    assert len(got) == 1 and stats.no_response == 1
    assert got[0]["response_ids"] == tok("Hello", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]


@pytest.mark.parametrize("bad", ["", "[0].content", "a..b", "a[x]", "a[0]b", "a.b]"])
def test_malformed_field_paths_are_config_errors(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="field"):
        completions(dataset="x.jsonl", response_field=bad)


def test_parse_field():
    from specbench.data.hub import parse_field, resolve_field

    assert parse_field("conversation[0].content") == ("conversation", [0, "content"])
    assert parse_field("text") == ("text", [])
    assert parse_field("a.b[-1]") == ("a", ["b", -1])
    assert resolve_field([{"c": "x"}], [0, "c"]) == "x"
    assert resolve_field([{"c": "x"}], [1, "c"]) is None
    assert resolve_field("text", ["c"]) is None


@pytest.mark.parametrize("dataset", ["nebius/Llama-3.1-8B-Instruct-Infinity-Instruct-0625",
                                     "/nowhere/llama.jsonl"])  # fmt: skip
def test_missing_release_says_how_to_get_it(hub, tok, dataset):
    with pytest.raises(FileNotFoundError) as err:
        read(tok, completions(dataset=dataset))
    msg = str(err.value)
    assert f"cannot load the completions dataset {dataset}" in msg
    assert f"huggingface-cli download --repo-type dataset {dataset}" in msg
    assert "HF_DATASETS_OFFLINE=1" in msg and "docs/cluster.md" in msg


# --- the config: per-domain training prompts, released completions, shards -----------------


def smoke(**data) -> dict:
    cfg = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    cfg["data"].update(data)
    return cfg


def test_train_prompts_per_domain_as_a_mapping():
    cfg = load_config(smoke(train_prompts_per_domain={"general": 10, "code": 0, "math": 3}))
    assert cfg.train_domains == ["general", "math"]
    assert [cfg.data.train_prompts(d) for d in ("general", "code")] == [10, 0]
    assert cfg.data.response_shards("general") is None
    cfg = load_config(smoke(train_prompts_per_domain=10, response_shard_prompts=4))
    assert cfg.train_domains == ["general", "code", "math"]
    assert cfg.data.response_shards("general") == 3  # ⌈10 / 4⌉


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train_prompts_per_domain": {"general": 4}}, "no entry for domain\\(s\\) \\['code'"),
        ({"train_prompts_per_domain": {"general": 0, "code": 0, "math": 0}}, "every domain"),
        ({"train_prompts_per_domain": {"general": -1, "code": 0, "math": 0}}, "general"),
        ({"train_prompts_per_domain": {"poetry": 1}}, "poetry"),
        ({"train_prompts_per_domain": 0}, "train_prompts_per_domain"),
        ({"response_shard_prompts": 0}, "response_shard_prompts"),
    ],
)
def test_bad_training_data_settings(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(smoke(**data))


def test_train_completions_need_a_training_domain():
    cfg = smoke(train_prompts_per_domain={"general": 4, "code": 0, "math": 0})
    release = {"dataset": "/data/llama.jsonl"}
    cfg["targets"]["smollm2-135m"]["train_completions"] = {"general": release}
    loaded = load_config(cfg)
    assert loaded.completions("smollm2-135m", "general").dataset == "/data/llama.jsonl"
    assert loaded.completions("smollm2-135m", "math") is None
    cfg["targets"]["smollm2-135m"]["train_completions"] = {"code": release}
    with pytest.raises(ConfigError, match="train_completions.code: code has no training"):
        load_config(cfg)


def test_schema_accepts_and_rejects_the_same_training_data_settings():
    import jsonschema

    schema = json.loads((ROOT / "workflow/schemas/config.schema.json").read_text())
    good = smoke(train_prompts_per_domain={"general": 4, "code": 0, "math": 0})
    good["targets"]["smollm2-135m"]["train_completions"] = {"general": {"dataset": "x.jsonl"}}
    jsonschema.validate(good, schema)
    for bad in ({"train_prompts_per_domain": {"general": -1}}, {"response_shard_prompts": 0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(smoke(**bad), schema)


def test_paper_config_training_data():
    cfg = load_config(yaml.safe_load((ROOT / "configs/paper.yaml").read_text()))
    assert cfg.train_domains == ["general"] and cfg.data.train_prompts("general") == 660_000
    general = cfg.data.source("general", "train")
    assert (general.dataset, general.config, general.field) == (
        "BAAI/Infinity-Instruct",
        "0625",
        "conversations",
    )
    assert general.allow_fewer and not general.filter
    release = cfg.completions("llama31-8b", "general")
    assert release.dataset == "nebius/Llama-3.1-8B-Instruct-Infinity-Instruct-0625"
    assert (release.field, release.response_field) == (
        "conversation[0].content",
        "generated_message.content",
    )
    assert cfg.data.response_shards("general") == 162


# --- the stages: train_completions, responses_shard, responses_gather ----------------------


def stage_config(target: Path, **data) -> dict:
    cfg = smoke(
        train_prompts_per_domain=5,
        eval_prompts_per_domain=2,
        train_new_tokens=10,
        generation_batch_size=2,
        **data,
    )
    cfg["targets"] = {"tiny": {"model": str(target), "engine": "hf", "dtype": "float32"}}
    cfg["domains"] = ["general"]
    return cfg


def job(stage, cfg, out, wildcards, **inputs) -> Job:
    model = cfg["targets"]["tiny"]["model"]
    return Job(stage, cfg, {"target": "tiny", "domain": "general", **wildcards}, inputs,
               {"responses": str(out)}, params={"model": model})  # fmt: skip


def gather_job(cfg: dict, shards: list[Path], out: Path) -> Job:
    wildcards = {"target": "tiny", "domain": "general"}
    return Job("responses_gather", cfg, wildcards, {"shards": list(map(str, shards))},
               {"responses": str(out)})  # fmt: skip


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_train_completions_stage(hub, tmp_path, target, capsys):
    cfg = stage_config(target)
    release = write_rows(tmp_path / "llama.jsonl", ROWS)
    cfg["targets"]["tiny"]["train_completions"] = {"general": {"dataset": release}}
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    out = tmp_path / "responses/train/general.jsonl"
    launch(job("train_completions", cfg, out, {}, prompts=str(tmp_path / "prompts.json")))
    rows = rows_of(out)
    assert len(rows) == 3 and [r["prompt_index"] for r in rows] == [0, 1, 2]
    tok = load_tokenizer(str(target))
    assert rows[2]["prompt_ids"] == chat_prompt_ids(tok, "Say hello.", 96)
    log = capsys.readouterr().out
    assert "rows=8, kept=3, no_prompt=1, no_response=2, repeated=1, eval_prompt=1" in log
    assert "fewer than the 5 training prompts asked for" in log


def test_sharded_responses_equal_the_unsharded_where_the_seeds_allow(tmp_path, target):
    """One shard = the unsharded job, byte for byte; two shards: the same prompts, in order,
    with the global prompt_index; a shard past the prompts is an empty file."""
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    prompts = str(tmp_path / "prompts.json")
    whole = tmp_path / "whole.jsonl"
    launch(job("responses", stage_config(target), whole, {"split": "train"}, prompts=prompts))

    one = stage_config(target, response_shard_prompts=8)
    launch(job("responses_shard", one, tmp_path / "one/shard0.jsonl", {"shard": "0"},
               prompts=prompts))  # fmt: skip
    assert (tmp_path / "one/shard0.jsonl").read_text() == whole.read_text()

    two = stage_config(target, response_shard_prompts=3)
    shards = [tmp_path / f"two/shard{i}.jsonl" for i in range(3)]
    for i, path in enumerate(shards):
        launch(job("responses_shard", two, path, {"shard": str(i)}, prompts=prompts))
    assert shards[2].read_text() == ""  # 5 prompts, 3 per shard: shard 2 has none
    gathered = tmp_path / "two/general.jsonl"
    launch(gather_job(two, shards, gathered))
    rows, ref = rows_of(gathered), rows_of(whole)
    assert [r["prompt_index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["prompt_ids"] for r in rows] == [r["prompt_ids"] for r in ref]
    assert all(r["response_ids"] for r in rows)

    with pytest.raises(ValueError, match="prompt_index 3 where 0 was expected"):
        launch(gather_job(two, shards[1:2], tmp_path / "bad.jsonl"))  # shard 0 missing
    assert not (tmp_path / "bad.jsonl").exists()


def dry_run_jobs(cfg: dict, tmp_path: Path) -> dict[str, int]:
    """The job counts of ``snakemake -n --forceall`` on ``cfg``."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--configfile", str(path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("Job stats:")[1].split("total")[0]
    return {k: int(v) for k, v in (line.split() for line in table.splitlines()[3:] if line)}


def test_dag_picks_one_producer_per_training_file(tmp_path):
    """Two targets, one with released completions for code only; 8 prompts in shards of 3."""
    cfg = smoke(response_shard_prompts=3)
    cfg["targets"]["other"] = dict(cfg["targets"]["smollm2-135m"])
    cfg["targets"]["smollm2-135m"]["train_completions"] = {"code": {"dataset": "/x.jsonl"}}
    jobs = dry_run_jobs(cfg, tmp_path)
    assert jobs["train_completions"] == 1
    assert jobs["responses_gather"] == 5 and jobs["responses_shard"] == 5 * 3
    assert jobs["responses"] == 2 * 2 * 3  # the evaluation splits only
    cfg["data"]["response_shard_prompts"] = None
    cfg["data"]["train_prompts_per_domain"] = {"general": 8, "code": 8, "math": 0}
    jobs = dry_run_jobs(cfg, tmp_path)
    assert jobs["train_completions"] == 1 and "responses_gather" not in jobs
    assert jobs["responses"] == 2 * 2 * 3 + 3  # + train: other×{general, code}, smollm×general
