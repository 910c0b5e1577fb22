"""Config validation: unknown keys and names fail with messages that say what is valid."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from specbench.artifacts import loss_slug
from specbench.config import ConfigError, load_config
from specbench.drafts import DRAFTS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "workflow/schemas/config.schema.json").read_text())


def raw(name: str = "smoke") -> dict:
    return yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = raw(name)
    jsonschema.validate(cfg, SCHEMA)
    load_config(cfg)


def test_unknown_top_level_key_rejected_by_both_layers():
    cfg = raw()
    cfg["lossses"] = ["kl"]
    with pytest.raises(jsonschema.ValidationError, match="lossses"):
        jsonschema.validate(cfg, SCHEMA)
    with pytest.raises(ConfigError, match="lossses: unknown key"):
        load_config(cfg)


def test_a_targets_micro_batch_must_divide_the_batch_when_the_config_loads():
    cfg = raw("paper")
    cfg["targets"]["llama31-8b"]["micro_batch_size"] = 5  # 64 sequences a step
    with pytest.raises(ConfigError, match="targets.llama31-8b.micro_batch_size 5 must divide"):
        load_config(cfg)
    cfg["targets"]["llama31-8b"]["micro_batch_size"] = 8
    assert load_config(cfg).train_for("llama31-8b").micro_batch_size == 8


def test_engine_generate_is_hf_or_vllm_and_vllm_runs_the_responses_job_as_one_process():
    """``engine_generate`` defaults to hf; anything but hf / vllm is refused, naming both; a
    vllm target's responses job runs as one process holding all its GPUs (vLLM's workers)."""
    from specbench.jobs import Job, starts_own_workers

    cfg = raw()
    target = next(iter(cfg["targets"]))
    assert load_config(cfg).targets[target].engine_generate == "hf"
    cfg["targets"][target]["engine_generate"] = "sglang"
    with pytest.raises(ConfigError, match="engine_generate.*'hf'.*'vllm'"):
        load_config(cfg)
    cfg["targets"][target].update(engine_generate="vllm", gpus=4)
    assert load_config(cfg).targets[target].engine_generate == "vllm"

    def job(stage: str, config: dict) -> Job:
        return Job(stage, config, {"target": target}, {}, {}, ranks=4, gpus=4)

    assert starts_own_workers(job("responses", cfg))
    assert starts_own_workers(job("responses_shard", cfg))
    assert not starts_own_workers(job("features_train", cfg))
    assert not starts_own_workers(job("responses", raw()))


def test_unknown_nested_key_rejected():
    cfg = raw()
    cfg["train"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match="train.learning_rate: unknown key"):
        load_config(cfg)


def test_unknown_loss_names_the_valid_ones():
    cfg = raw()
    cfg["losses"] = ["kl", "reverse_kl"]
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    msg = str(err.value)
    assert "reverse_kl" in msg and "lk_lambda" in msg and "tv" in msg


def test_unknown_loss_parameter_rejected():
    cfg = raw()
    cfg["losses"] = ["kl", "lk_lambda(etta=3)"]
    with pytest.raises(ConfigError, match="etta"):
        load_config(cfg)


def test_unknown_arch_names_the_valid_ones():
    cfg = raw()
    cfg["draft_archs"] = ["eagle4"]
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "eagle4" in str(err.value) and "medusa" in str(err.value)


def test_bad_domain_and_temperature():
    cfg = raw()
    cfg["domains"] = ["poetry"]
    with pytest.raises(ConfigError, match="domains"):
        load_config(cfg)
    cfg = raw()
    cfg["temperatures"] = [0.7]
    with pytest.raises(ConfigError, match="temperatures"):
        load_config(cfg)


def test_baseline_must_be_in_losses():
    cfg = raw()
    cfg["baseline_loss"] = "tv"
    with pytest.raises(ConfigError, match="baseline_loss"):
        load_config(cfg)


def test_replay_lookahead_is_checked():
    cfg = raw()
    cfg["eval"]["live_new_tokens"] = cfg["data"]["eval_new_tokens"]
    with pytest.raises(ConfigError, match="look-ahead"):
        load_config(cfg)


def test_loss_specs_are_canonicalised_and_slugs_are_path_safe():
    cfg = copy.deepcopy(raw())
    cfg["losses"] = ["kl", "lk_lambda( eta = 10 )", "ce+decay(gamma=7)+focal(alpha=0.3)"]
    c = load_config(cfg)
    assert "lk_lambda(eta=10)" in c.losses
    for spec in c.losses:
        slug = loss_slug(spec)
        assert all(ch.isalnum() or ch in "_.-" for ch in slug), slug
    assert len({loss_slug(s) for s in c.losses}) == len(c.losses)


def test_schema_file_is_generated_from_the_models():
    """``workflow/schemas/config.schema.json`` is the models' schema, not a second copy."""
    from specbench.config import json_schema

    assert SCHEMA == json.loads(json.dumps(json_schema())), (
        "regenerate it: python -m specbench.config > workflow/schemas/config.schema.json"
    )


def test_numeric_axes_from_the_command_line_are_coerced():
    """``--config seeds=[0] temperatures=[1]`` gives strings; they are read as integers."""
    cfg = raw()
    cfg.update(seeds=["0", "3"], temperatures=["1"])
    loaded = load_config(cfg)
    assert loaded.seeds == [0, 3] and loaded.temperatures == [1]
    cfg.update(seeds=["zero"])
    with pytest.raises(ConfigError, match="seeds.0"):
        load_config(cfg)


def test_unknown_domain_names_the_registered_ones():
    cfg = raw()
    cfg["domains"] = ["general", "poetry"]
    with pytest.raises(ConfigError, match=r"unknown domain\(s\) \['poetry'\]; valid: \["):
        load_config(cfg)


def test_snakemake_command_line_overrides(tmp_path):
    """``--config seeds=[0]`` plans the matrix; a wrong value is one clear error, no traceback."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile"]
    cmd += ["configs/smoke.yaml", "--config"]
    ok = subprocess.run([*cmd, "seeds=[0]", "temperatures=[1]"], cwd=ROOT, capture_output=True,
                        text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run([*cmd, "seeds=[zero]"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0
    said = bad.stdout + bad.stderr  # Snakemake prints workflow errors on stdout
    assert "invalid specbench config:\n  seeds.0:" in said, said[-2000:]
    assert "Traceback" not in said


def test_vocabulary_per_architecture_follows_the_reference_unless_overridden():
    from specbench.drafts import DRAFTS

    cfg = raw("tiny-full")
    cfg.pop("arch_vocab", None)
    loaded = load_config(cfg)
    assert DRAFTS["eagle3"].reference_vocab == "truncated"
    for arch in ("medusa", "mlp_speculator", "mtp", "block_diffusion"):
        assert loaded.vocab_for(arch) == DRAFTS[arch].reference_vocab == "full", arch
    assert loaded.vocabs_for("smollm2-135m") == ["full", "truncated"]
    cfg["arch_vocab"] = {"medusa": "truncated"}
    assert load_config(cfg).vocab_for("medusa") == "truncated"
    cfg["arch_vocab"] = {"medusa_v2": "full"}
    with pytest.raises(ConfigError, match=r"arch_vocab.medusa_v2.\[key\]: Input should be"):
        load_config(cfg)


def test_group_size_per_architecture_and_groups():
    raw = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    cfg = load_config(raw)
    assert [len(g) for g in cfg.train_groups("llama31-8b", "eagle3")] == [6, 6, 6, 6]
    assert len(cfg.train_groups("llama31-8b", "medusa")) == 24
    runs = [r for g in cfg.train_groups("llama33-70b", "eagle3") for r in g]
    assert runs == [(loss, s) for loss in cfg.losses for s in cfg.seeds]  # each once, in order
    raw["targets"]["llama31-8b"]["group_size"] = {"medusa": 1}
    with pytest.raises(ConfigError, match="group_size: per architecture needs a 'default'"):
        load_config(raw)


def test_architecture_names_and_per_architecture_settings_are_types():
    """``ArchName`` (the draft registry's names) and ``PerArch[T]`` (one value, or one per
    architecture with a ``default``) check every place that names an architecture alike."""
    cfg = copy.deepcopy(raw())
    cfg["eval"]["k"] = 4  # one number for every architecture
    assert load_config(cfg).eval.k_for("medusa") == 4
    bad_places = {
        "draft_archs": lambda c: c.update(draft_archs=["eagle4"]),
        "arch_hparams.eagle4.[key]": lambda c: c.update(arch_hparams={"eagle4": {}}),
        "learning_curve.arch": lambda c: c.update(learning_curve={"arch": "eagle4", "steps": [1]}),
        "train.k.dict": lambda c: c["train"].update(k={"default": 3, "eagle4": 2}),
        "arch_losses.eagle4.[key]": lambda c: c.update(arch_losses={"eagle4": ["kl"]}),
    }
    first = ", ".join(repr(a) for a in sorted(DRAFTS)[:2])  # the valid names are listed
    for where, spoil in bad_places.items():
        c = copy.deepcopy(cfg)
        spoil(c)
        with pytest.raises(ConfigError, match=rf"{re.escape(where)}.*{re.escape(first)}"):
            load_config(c)
    for section, key in (("eval", "k"), ("train", "lr")):
        c = copy.deepcopy(cfg)
        c[section][key] = {"eagle3": 1}
        with pytest.raises(ConfigError, match=rf"{section}.{key}: per architecture needs a 'def"):
            load_config(c)


def test_an_architecture_may_train_its_own_losses_which_hold_the_baseline():
    """``arch_losses``: draft_lm runs the TVD++ paper's comparison, the others ``losses``;
    the matrix and its online groups follow it; a list without the baseline is refused."""
    c = copy.deepcopy(raw())
    c["draft_archs"] = ["eagle3", "draft_lm"]
    c["arch_losses"] = {"draft_lm": ["kl", "tvdpp"]}
    cfg = load_config(c)
    assert cfg.losses_for("draft_lm") == ["kl", "tvdpp"] and cfg.losses_for("eagle3") == cfg.losses
    assert cfg.all_losses == [*cfg.losses, "tvdpp"]
    target = next(iter(cfg.targets))
    runs = [r for g in cfg.train_groups(target, "draft_lm") for r in g]
    assert runs == [(loss, s) for loss in ("kl", "tvdpp") for s in cfg.seeds]
    c["arch_losses"] = {"draft_lm": ["tvdpp"]}
    with pytest.raises(ConfigError, match="arch_losses.draft_lm must hold baseline_loss"):
        load_config(c)


def test_a_target_s_own_hparams_override_the_architecture_s():
    c = copy.deepcopy(raw())
    target = next(iter(c["targets"]))
    c["arch_hparams"] = {"draft_lm": {"layers": 2, "width": 0.5}}
    c["targets"][target]["arch_hparams"] = {"draft_lm": {"init": "pretrained", "model": "m"}}
    got = load_config(c).hparams_for(target, "draft_lm")
    assert got == {"layers": 2, "width": 0.5, "init": "pretrained", "model": "m"}
