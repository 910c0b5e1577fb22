"""Prompt data: offline sources per domain, and configured `datasets` sources (data.sources)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from specbench.config import ConfigError, load_config
from specbench.data.chat_prompts import chat_prompts
from specbench.data.domains import DOMAINS, eval_prompts, train_prompts
from specbench.data.generate import split_at_eos
from specbench.data.math_problems import word_problems

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "workflow/schemas/config.schema.json").read_text())


@pytest.mark.parametrize("domain", DOMAINS)
def test_train_and_eval_prompts_are_disjoint_and_deterministic(domain):
    ev, tr = eval_prompts(domain, 30), train_prompts(domain, 60)
    assert len(ev) == 30 and len(tr) == 60
    assert not set(ev) & set(tr)
    assert len(set(tr)) == len(tr)
    assert tr == train_prompts(domain, 60)


def test_eval_sources_are_the_real_benchmarks():
    assert len(eval_prompts("general", 80)) == 80  # all of MT-Bench's first turns
    assert len(eval_prompts("code", 164)) == 164  # all of HumanEval
    assert "def has_close_elements" in eval_prompts("code", 1)[0]
    with pytest.raises(ValueError, match="only 80 exist"):
        eval_prompts("general", 81)


def test_unknown_domain():
    with pytest.raises(ValueError, match="valid: \\['code', 'general', 'math'\\]"):
        eval_prompts("poetry", 1)


def test_math_problems_have_correct_answers_and_disjoint_templates():
    for p in word_problems(30, "train") + word_problems(30, "eval"):
        assert p.answer >= 0 and "?" in p.question
    tr = {p.question.split(" ")[1] for p in word_problems(50, "train")}
    ev = {p.question.split(" ")[1] for p in word_problems(50, "eval")}
    assert tr != ev  # different templates, not only different numbers
    p = word_problems(1, "eval")[0]  # percent template: price × (1 − pct) × qty
    nums = [int(t.strip("$%.")) for t in p.question.split() if t.strip("$%.").isdigit()]
    price, pct, qty = nums
    assert p.answer == price * (100 - pct) // 100 * qty


def test_chat_prompts_share_no_six_word_run_with_mt_bench():
    """The general domain's templated requests are not MT-Bench in other words."""

    def runs(text: str) -> set[tuple[str, ...]]:
        w = text.lower().split()
        return {tuple(w[i : i + 6]) for i in range(len(w) - 5)}

    evaluation = set().union(*(runs(q) for q in eval_prompts("general", 80)))
    train = chat_prompts(2000, 0)
    assert len(set(train)) == 2000 and train == chat_prompts(2000, 0)
    assert not any(runs(p) & evaluation for p in train)
    assert train != chat_prompts(2000, 1)  # the seed picks the stream


def test_split_at_eos():
    assert split_at_eos([5, 6, 2, 7, 8], 2) == ([5, 6, 2], [7, 8])
    assert split_at_eos([5, 6], 2) == ([5, 6], [])


# --- data.sources: prompts from `datasets` (hub ids or local copies) -------------------------

HUB_SOURCE = {"dataset": "openai/gsm8k", "config": "main", "split": "test", "field": "question"}


def source(**kw):
    from specbench.data.hub import DatasetSource

    return DatasetSource(**kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def infinity_rows():
    """Infinity-Instruct's shape: ShareGPT `conversations` and a `langdetect` column."""

    def chat(*turns):
        return [{"from": who, "value": text} for who, text in turns]

    return [
        {"conversations": chat(("human", "Q1"), ("gpt", "A1")), "langdetect": "en"},
        {"conversations": chat(("human", "Frage"), ("gpt", "Antwort")), "langdetect": "de"},
        {"conversations": chat(("system", "be brief"), ("human", " Q2\n")), "langdetect": "en"},
        {"conversations": chat(("gpt", "no question here")), "langdetect": "en"},
        {"conversations": chat(("human", "Q1"), ("gpt", "again")), "langdetect": "en"},
        {"conversations": chat(("human", "Q3"), ("gpt", "A3")), "langdetect": "en"},
    ]


def test_jsonl_question_column_in_stored_order(hub, tmp_path):
    from specbench.data.hub import load_prompts

    rows = [{"question": f"q{i}?", "answer": i} for i in range(9)]
    path = write_jsonl(tmp_path / "gsm.jsonl", rows)
    src = source(dataset=path, split="test", field="question")
    assert load_prompts(src, 4) == ["q0?", "q1?", "q2?", "q3?"]
    assert load_prompts(src, 4, seed=5) == load_prompts(src, 4)  # seed only moves a shuffle


def test_shuffle_is_seeded_and_deterministic(hub, tmp_path):
    from specbench.data.hub import load_prompts

    path = write_jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}"} for i in range(50)])
    src = source(dataset=path, field="question", shuffle_seed=3)
    first = load_prompts(src, 10)
    assert first == load_prompts(src, 10)
    assert first != [f"q{i}" for i in range(10)] and len(set(first)) == 10
    assert load_prompts(src, 10, seed=1) != first
    moved = source(**{**src.model_dump(), "shuffle_seed": 4})
    assert load_prompts(src, 10, seed=1) == load_prompts(moved, 10)  # seed adds to shuffle_seed


def test_parquet_chat_column_first_human_turn_and_filter(hub, tmp_path):
    from specbench.data.hub import load_prompts

    path = tmp_path / "infinity.parquet"
    hub.Dataset.from_list(infinity_rows()).to_parquet(str(path))
    src = source(dataset=str(path), field="conversations", filter={"langdetect": "en"})
    # German row filtered, gpt-only row skipped, repeated Q1 dropped, whitespace stripped
    assert load_prompts(src, 3) == ["Q1", "Q2", "Q3"]
    unfiltered = source(dataset=str(path), field="conversations")
    assert load_prompts(unfiltered, 3) == ["Q1", "Frage", "Q2"]


def test_save_to_disk_folder_openai_roles_and_split(hub, tmp_path):
    from specbench.data.hub import load_prompts

    def chat(user):
        return [{"role": "system", "content": "sys"}, {"role": "user", "content": user}]

    rows = {"train": ["t1", "t2"], "test": ["e1", "e2", "e3"]}
    dd = hub.DatasetDict(
        {k: hub.Dataset.from_dict({"messages": [chat(u) for u in v]}) for k, v in rows.items()}
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    src = source(dataset=str(tmp_path / "saved"), split="test", field="messages")
    assert load_prompts(src, 3) == ["e1", "e2", "e3"]
    with pytest.raises(ValueError, match="no split 'validation'; has \\['train', 'test'\\]"):
        load_prompts(source(**{**src.model_dump(), "split": "validation"}), 1)


def test_snapshot_folder_with_readme_configs(hub, tmp_path):
    """A hub snapshot downloaded with --local-dir: the README's configs pick the subset."""
    from specbench.data.hub import load_prompts

    snap = tmp_path / "Infinity-Instruct"
    for sub, text in [("0625", "from 0625"), ("7M", "from 7M")]:
        (snap / sub).mkdir(parents=True)
        rows = [{"conversations": [{"from": "human", "value": text}], "langdetect": "en"}]
        hub.Dataset.from_list(rows).to_parquet(str(snap / sub / "part-0.parquet"))
    configs = "".join(
        f"- config_name: '{c}'\n  data_files:\n  - split: train\n    path: {c}/*\n"
        for c in ("0625", "7M")
    )
    (snap / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    src = source(dataset=str(snap), config="0625", field="conversations")
    assert load_prompts(src, 1) == ["from 0625"]


def test_more_prompts_than_available(hub, tmp_path):
    from specbench.data.hub import load_prompts

    path = tmp_path / "infinity.parquet"
    hub.Dataset.from_list(infinity_rows()).to_parquet(str(path))
    src = source(dataset=str(path), field="conversations", filter={"langdetect": "en"})
    with pytest.raises(ValueError, match="only 3 usable distinct prompts in 6 rows.*asked for 4"):
        load_prompts(src, 4)


def test_unknown_column_lists_the_columns(hub, tmp_path):
    from specbench.data.hub import load_prompts

    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q"}])
    with pytest.raises(ValueError, match="no column\\(s\\) \\['text'\\]; has \\['question'\\]"):
        load_prompts(source(dataset=path, field="text"), 1)


@pytest.mark.parametrize("dataset", ["openai/gsm8k", "/nowhere/gsm8k.jsonl", "./no-such-folder"])
def test_missing_dataset_says_how_to_get_it(hub, dataset):
    from specbench.data.hub import load_prompts

    with pytest.raises(FileNotFoundError) as err:
        load_prompts(source(**{**HUB_SOURCE, "dataset": dataset}), 1)
    msg = str(err.value)
    assert f"cannot load the prompt dataset {dataset}" in msg
    assert f"huggingface-cli download --repo-type dataset {dataset}" in msg
    assert "HF_DATASETS_OFFLINE=1" in msg and "HF_HOME" in msg
    assert "point `dataset:` at a local .jsonl/.json/.parquet/.csv file" in msg


def test_configured_source_wins_over_the_offline_default(hub, tmp_path):
    from specbench.data.hub import split_prompts

    path = write_jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}"} for i in range(5)])
    src = source(dataset=path, field="question")
    prompts, name = split_prompts("math", "eval", 2, src)
    assert prompts == ["q0", "q1"] and name == f"{path}:train/question"
    prompts, name = split_prompts("math", "eval", 2, None)
    assert prompts == eval_prompts("math", 2) and name == "gsm_style_generated"
    prompts, name = split_prompts("code", "train", 2, None)
    assert prompts == train_prompts("code", 2) and name == "cpython_stdlib"


def test_training_prompts_seen_in_eval_are_dropped():
    from specbench.data.hub import drop_overlap

    assert drop_overlap(["a", "b", "c", "d"], ["c", "x", "a"]) == (["b", "d"], 2)
    assert drop_overlap(["a"], []) == (["a"], 0)


# config: the pydantic model and the JSON schema accept and reject the same `data.sources`


def with_sources(sources):
    cfg = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    cfg["data"]["sources"] = sources
    return cfg


def infinity_source(**kw):
    return {"dataset": "BAAI/Infinity-Instruct", "config": "0625", "field": "conversations", **kw}


GOOD_SOURCES = [
    {},
    {"math": {"eval": HUB_SOURCE}},
    {"general": {"train": infinity_source(filter={"langdetect": "en"}, shuffle_seed=0)}},
    {"code": {"train": {"dataset": "/data/code.jsonl", "field": "prompt"}, "eval": HUB_SOURCE}},
]
BAD_SOURCES = [  # (sources, what the pydantic error names)
    (
        {"poetry": {"eval": HUB_SOURCE}},
        "sources: unknown domain 'poetry'; valid: \\['code', 'general',",
    ),
    ({"math": {"test": HUB_SOURCE}}, "math: unknown split 'test'; valid: \\['train', 'eval'\\]"),
    ({"math": {"eval": {**HUB_SOURCE, "column": "q"}}}, "sources.math.eval.column: unknown key"),
    ({"math": {"eval": {"dataset": "openai/gsm8k"}}}, "sources.math.eval.field"),
    ({"general": {"train": infinity_source(config=625)}}, "config must be a string: quote it"),
    ({"general": {"train": infinity_source(filter={"langdetect": ["en"]})}}, "filter.langdetect"),
    ({"math": {"eval": {**HUB_SOURCE, "shuffle_seed": "zero"}}}, "shuffle_seed"),
    ({"math": {"eval": {**HUB_SOURCE, "shuffle_seed": True}}}, "shuffle_seed"),
    ({"math": {"eval": {**HUB_SOURCE, "dataset": ""}}}, "dataset"),
]


@pytest.mark.parametrize("sources", GOOD_SOURCES)
def test_sources_accepted_by_schema_and_config(sources):
    cfg = with_sources(sources)
    jsonschema.validate(cfg, SCHEMA)
    assert load_config(cfg).data.sources.keys() == sources.keys()


@pytest.mark.parametrize(("sources", "message"), BAD_SOURCES)
def test_sources_rejected_by_schema_and_config(sources, message):
    cfg = with_sources(sources)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, SCHEMA)
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_paper_config_sources():
    cfg = load_config(yaml.safe_load((ROOT / "configs/paper.yaml").read_text()))
    general = cfg.data.source("general", "train")
    assert general.dataset == "BAAI/Infinity-Instruct" and general.config == "0625"
    assert general.allow_fewer and general.filter == {}  # all of 0625, as the paper
    assert cfg.data.source("math", "eval").describe() == "openai/gsm8k[main]:test/question"
    assert cfg.data.source("code", "eval") is None and cfg.data.source("math", "train") is None


def test_allow_fewer_takes_every_usable_prompt(hub, tmp_path):
    from specbench.data.hub import load_prompts

    path = tmp_path / "infinity.parquet"
    hub.Dataset.from_list(infinity_rows()).to_parquet(str(path))
    src = source(dataset=str(path), field="conversations", filter={"langdetect": "en"})
    lenient = source(**{**src.model_dump(), "allow_fewer": True})
    logged = []
    assert load_prompts(lenient, 660_000, log=logged.append) == ["Q1", "Q2", "Q3"]
    assert "only 3 usable distinct prompts in 6 rows" in logged[0] and "taking all 3" in logged[0]
    assert load_prompts(lenient, 2) == ["Q1", "Q2"]


def test_a_domain_with_no_training_prompts_is_only_evaluated():
    from specbench.data.hub import NO_TRAINING, domain_prompts

    payload = domain_prompts("math", 0, 3, log=lambda *a: None)
    assert payload["train"] == [] and payload["train_source"] == NO_TRAINING
    assert len(payload["eval"]) == 3
