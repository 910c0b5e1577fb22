"""External drafts in the pipeline (issue 12 §2): a checkpoint made by a peer's own code,
named in a config, planned by Snakemake (dry run) and run through the real stages
(``external_vocab`` → ``responses`` / ``features_eval`` → ``import_draft`` →
``evaluate_draft``) on a tiny target, then aggregated into ``tau.csv`` with its origin.

Marker ``interop``: the checkpoint is built and saved by speculators 0.9.0's
``Eagle3DraftModel`` (``tests/peers_site.py``). The whole matrix is never run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from peers_site import ensure_peers, speculators_eagle3
from test_interop import speculators_logits
from tiny import save_tiny_chat_target

from specbench.aggregation.tables import load_per_prompt, tau_table
from specbench.artifacts import losses_by_slug, vocab_ids
from specbench.config import load_config
from specbench.data.splits import eval_split
from specbench.drafts import load_draft
from specbench.features.cache import FeatureCache
from specbench.formats import FormatError
from specbench.jobs import Job, launch
from specbench.targets.info import target_info_from_model

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"train": ["Say hello."], "eval": ["Describe the sea.", "What is 2+2?"]}
VD, K = 64, 3


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, saved as a checkpoint."""
    return save_tiny_chat_target(tmp_path_factory.mktemp("ext_target") / "model", layers=8)


@pytest.fixture(scope="module")
def checkpoint(target, tmp_path_factory) -> tuple[Path, object]:
    """A random EAGLE-3 with a 64-token vocabulary, made and saved by speculators itself."""
    ensure_peers()
    from transformers import AutoConfig

    layer = AutoConfig.from_pretrained(target)
    layer.num_hidden_layers = 1
    d2t = torch.randperm(layer.vocab_size, generator=torch.Generator().manual_seed(0))[:VD]
    out = tmp_path_factory.mktemp("ext_ckpt") / "peer-eagle3"
    peer = speculators_eagle3(layer, d2t.sort().values, str(target), K, 4, out)
    return out, peer


def config(target: Path, ckpt: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["targets"] = {"tiny": {"model": str(target), "dtype": "float32", "draft_archs": []}}
    cfg.update(draft_archs=["eagle3"], losses=["kl"], domains=["general"], seeds=[0])
    cfg["data"].update(eval_prompts_per_domain=2, eval_new_tokens=16, feature_batch_size=1)
    cfg["eval"].update(live_prompts=1, live_new_tokens=12)
    cfg["external_drafts"] = [
        {"name": "peer", "target": "tiny", "format": "speculators", "path": str(ckpt)}
    ]
    return cfg


def test_config_names_external_drafts(target, checkpoint):
    ckpt, _ = checkpoint
    cfg = load_config(config(target, ckpt))
    (ext,) = cfg.external_drafts
    assert (ext.arch, ext.loss, ext.slug, ext.vocab_name) == (
        "eagle3",
        "external:peer",
        "external-peer",
        "external-peer",
    )
    assert losses_by_slug(["kl", ext.loss]) == {"kl": "kl", "external-peer": "external:peer"}
    bad = config(target, ckpt)
    bad["external_drafts"][0].update(format="vllm")  # holds medusa or mlp_speculator
    with pytest.raises(ValueError, match="holds one of"):
        load_config(bad)


def test_dry_run_plans_import_and_evaluation(target, checkpoint, tmp_path):
    ckpt, _ = checkpoint
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(config(target, ckpt)))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile", str(cfg_file)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for job in ("external_vocab", "import_draft", "evaluate_draft", "aggregate"):
        assert job in out, out
    assert "train_draft" not in out  # no trained draft on this target
    assert "results/drafts/tiny/eagle3/external-peer/seed0/model.safetensors" in out


def test_external_draft_through_the_stages(target, checkpoint, tmp_path):
    """The stages themselves, as the rules call them: the imported draft is the peer's
    (same logits), and its evaluation lands in tau.csv with loss external:peer."""
    ckpt, peer = checkpoint
    cfg = config(target, ckpt)
    common = {"config": cfg, "params": {"model": str(target)}}
    wc = {"target": "tiny", "name": "peer"}
    vocab = tmp_path / "vocab.json"
    launch(Job("external_vocab", wildcards=wc, input={}, output={"vocab": str(vocab)}, **common))
    assert len(json.loads(vocab.read_text())["draft_to_target"]) == VD
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    caches = []
    for t in cfg["temperatures"]:
        split = eval_split(t)
        resp = tmp_path / f"{split}.jsonl"
        wcs = {"target": "tiny", "split": split, "domain": "general"}
        launch(Job("responses", wildcards=wcs, input={"prompts": str(prompts)},
                   output={"responses": str(resp)}, **common))  # fmt: skip
        caches.append(str(tmp_path / "features" / split / "general.safetensors"))
        launch(Job("features_eval", wildcards=wcs,
                   input={"responses": [str(resp)], "vocab": str(vocab)},
                   output={"cache": caches[-1]}, **common))  # fmt: skip
    draft_dir = tmp_path / "drafts" / "external-peer" / "seed0"
    launch(Job("import_draft", wildcards={**wc, "arch": "eagle3"}, input={"vocab": str(vocab)},
               output={"model": str(draft_dir / "model.safetensors")}, **common))  # fmt: skip
    assert json.loads((draft_dir / "origin.json").read_text())["format"] == "speculators"

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target)
    d2t = torch.tensor(json.loads(vocab.read_text())["draft_to_target"])
    draft = load_draft(draft_dir, target_info_from_model(model, d2t)).eval()
    g = torch.Generator().manual_seed(5)
    inputs = torch.randn(1, 12, 4, 32, generator=g), torch.randint(0, VD, (1, 12), generator=g)
    with torch.no_grad():
        feats, ids = inputs
        ours = draft.forward_train(feats, ids, torch.ones_like(ids, dtype=torch.bool), K).logits
    assert (ours[0] - speculators_logits(peer, inputs)).abs().max() <= 1e-5

    eval_dir = tmp_path / "eval"
    wce = {"target": "tiny", "arch": "eagle3", "loss": "external-peer", "seed": "0"}
    launch(Job("evaluate_draft", wildcards=wce,
               input={"draft": str(draft_dir / "model.safetensors"), "caches": caches},
               output={"metrics": str(eval_dir / "metrics.json"),
                       "per_prompt": str(eval_dir / "per_prompt.csv")},
               config=cfg, params={"model": str(target), "loss": "external:peer"}))  # fmt: skip
    tau = tau_table(load_per_prompt([eval_dir]))
    assert set(tau["loss"]) == {"external:peer"} and set(tau["origin"]) == {"external"}
    assert tau["tau_expected"].between(1, K + 1).all()
    t1 = tau[tau["temperature"] == 1]
    assert t1["tau_unbiased"].between(1, K + 1).all() and not pd.isna(t1["tau_live"]).any()

    # the paper_figures stage puts it in released_drafts.csv (no model card: a local folder)
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    tables.mkdir()
    tau.to_csv(tables / "tau.csv", index=False)
    pd.DataFrame(columns=["target", "draft_arch", "domain", "temperature", "loss"]).to_csv(
        tables / "gains.csv", index=False
    )
    launch(Job("paper_figures", wildcards={},
               input={"tau": str(tables / "tau.csv"), "gains": str(tables / "gains.csv")},
               output={"dir": str(figures)}, config=cfg,
               params={"reference": str(ROOT / "paper_figures/reference")}))  # fmt: skip
    released = pd.read_csv(figures / "released_drafts.csv")
    ours = released[released["draft"] == "peer"].set_index("temperature")
    assert list(ours.index) == [0, 1] and ours["card_tau"].isna().all()
    assert ours.loc[1, "tau_unbiased"] == t1["tau_unbiased"].mean()
    assert ours.loc[0, "hub_id"] == str(ckpt)
    assert released["card_tau"].notna().sum() == 4  # the two model cards, T = 0 and 1
    assert (figures / "released_drafts.png").read_bytes()[:4] == b"\x89PNG"


def test_a_draft_reading_other_target_layers_gets_caches_of_its_own(target, tmp_path):
    """An EAGLE-3 checkpoint (made by speculators) that fuses target layers 1, 3, 6 instead of
    our 2, 4, 5: its vocabulary file names its layers, its caches hold them, it imports (it
    was refused) and is evaluated; over the run's vocabulary, whose caches hold ours, it is
    refused with the reason."""
    ensure_peers()
    from transformers import AutoConfig, AutoModelForCausalLM

    layer = AutoConfig.from_pretrained(target)
    layer.num_hidden_layers = 1
    d2t = torch.randperm(layer.vocab_size, generator=torch.Generator().manual_seed(1))[:VD]
    ckpt = tmp_path / "peer-aux"
    speculators_eagle3(layer, d2t.sort().values, str(target), K, 5, ckpt, aux=(1, 3, 6))
    cfg = config(target, ckpt)
    common = {"config": cfg, "params": {"model": str(target)}}
    wc = {"target": "tiny", "name": "peer"}
    vocab = tmp_path / "vocab.json"
    launch(Job("external_vocab", wildcards=wc, input={}, output={"vocab": str(vocab)}, **common))
    assert json.loads(vocab.read_text())["feature_layers"] == [1, 3, 6, 8]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    split, wcs = eval_split(1), {"target": "tiny", "split": eval_split(1), "domain": "general"}
    resp, cache = tmp_path / "r.jsonl", tmp_path / "features" / split / "general.safetensors"
    launch(Job("responses", wildcards=wcs, input={"prompts": str(prompts)},
               output={"responses": str(resp)}, **common))  # fmt: skip
    launch(Job("features_eval", wildcards=wcs,
               input={"responses": [str(resp)], "vocab": str(vocab)},
               output={"cache": str(cache)}, **common))  # fmt: skip
    seq = FeatureCache(cache).sequence(0)
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    with torch.no_grad():
        hs = model(seq["input_ids"][None], output_hidden_states=True).hidden_states
    torch.testing.assert_close(seq["features"], torch.stack([hs[i][0] for i in (1, 3, 6, 8)], 1))

    draft_dir = tmp_path / "drafts" / "external-peer" / "seed0"
    imp = Job("import_draft", wildcards={**wc, "arch": "eagle3"}, input={"vocab": str(vocab)},
              output={"model": str(draft_dir / "model.safetensors")}, **common)  # fmt: skip
    launch(imp)
    info = target_info_from_model(model, torch.tensor(vocab_ids(vocab)))
    assert load_draft(draft_dir, info).target_layers(8) == (1, 3, 6, 8)
    eval_dir = tmp_path / "eval"
    launch(Job("evaluate_draft", wildcards={**wc, "arch": "eagle3", "loss": "external-peer",
                                           "seed": "0"},
               input={"draft": str(draft_dir / "model.safetensors"), "caches": [str(cache)]},
               output={"metrics": str(eval_dir / "metrics.json"),
                       "per_prompt": str(eval_dir / "per_prompt.csv")},
               config={**cfg, "temperatures": [1]},
               params={"model": str(target), "loss": "external:peer"}))  # fmt: skip
    tau = tau_table(load_per_prompt([eval_dir]))
    assert tau["tau_expected"].between(1, K + 1).all() and tau["tau_live"].between(1, K + 1).all()

    run_vocab = tmp_path / "run_vocab.json"  # the run's vocabulary: caches at our layers
    run_vocab.write_text(json.dumps({"draft_to_target": vocab_ids(vocab)}))
    imp.input, imp.output = {"vocab": str(run_vocab)}, {"model": str(tmp_path / "x/model.st")}
    with pytest.raises(FormatError, match=r"reads target layers \(1, 3, 6, 8\)"):
        launch(imp)
