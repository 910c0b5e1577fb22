from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from specbench.config import ConfigError, load_config, loss_slug
from specbench.data.splits import SPLITS, eval_split
from specbench.formats import FORMATS, supported
from specbench.features.vocab import VOCABS

min_version("8.0")


# the embedded default, unless --configfile names another (which then replaces it whole:
# a deep merge would leak default keys, e.g. per-arch eval K, into the smoke config)
if not workflow.overwrite_configfiles:

    configfile: "configs/default.yaml"


# One source of truth for the config: the pydantic models of specbench.config (the JSON
# schema in workflow/schemas/ is generated from them). Errors name the key and the valid
# choices; `--config seeds=[0]` list items arrive as strings and are coerced.
try:
    CFG = load_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
R = "results"
LOSS_BY_SLUG = {loss_slug(spec): spec for spec in CFG.losses}
# drafts trained elsewhere (workflow/rules/formats.smk): loss external:<name>, folder external-<name>
EXTERNAL = {e.name: e for e in CFG.external_drafts}
LOSS_BY_SLUG.update({e.slug: e.loss for e in CFG.external_drafts})
EVAL_SPLITS = [eval_split(t) for t in CFG.temperatures]
SCRIPT = "../scripts/run_rule.py"  # every rule: run_rule(snakemake) -> specbench.jobs.<stage>
ENV = "../envs/specbench.yaml"


wildcard_constraints:
    target="|".join(CFG.targets),
    domain="|".join(CFG.domains),
    split="|".join(SPLITS),
    vocab="|".join([*VOCABS, *(e.slug for e in CFG.external_drafts)]),
    seed=r"\d+",


def target_source(wc):
    """Converted folder for packaged GGUF targets; nothing to build for hub ids / folders."""
    return f"{R}/targets/{wc.target}" if CFG.targets[wc.target].is_gguf else []


def target_model(target):
    t = CFG.targets[target]
    return f"{R}/targets/{target}" if t.is_gguf else t.model


def matrix_dirs(stage):
    """``{R}/{stage}/target/arch/loss/seedN`` for every trained draft of the matrix, then
    ``{R}/{stage}/target/arch/external-<name>/seed0`` for every external draft."""
    return [
        f"{R}/{stage}/{t}/{arch}/{loss_slug(loss)}/seed{seed}"
        for t in CFG.targets
        for arch in CFG.archs_for(t)
        for loss in CFG.losses
        for seed in CFG.seeds
    ] + [f"{R}/{stage}/{e.target}/{e.arch}/{e.slug}/seed0" for e in CFG.external_drafts]


def export_dirs():
    """``{R}/export/target/arch/loss/seedN/<format>`` for every draft and supported format."""
    return [
        f"{d}/{fmt}" for d in matrix_dirs("export") for fmt in supported(d.split("/")[3])
    ]


def eval_vocab(wc):
    """The vocabulary a draft is evaluated over: its architecture's, or an external draft's."""
    ext = {e.slug: e for e in CFG.external_drafts}.get(wc.loss)
    return ext.vocab_name if ext else CFG.vocab_for(wc.arch)


def config_digest(*sections):
    """Digest of the config sections a rule's output depends on, passed as a param.

    Stages read the config directly, so without this Snakemake would keep outputs made
    under another config (say, the smoke sizes) as up to date; a changed digest reruns them.
    """
    import hashlib
    import json

    dump = CFG.model_dump(mode="json")
    blob = json.dumps([dump.get(s) for s in sections], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def gpu_resources(wc):
    return CFG.targets[wc.target].gpus


# the learning curve (workflow/rules/curve.smk)
CURVE = CFG.learning_curve
CURVE_BASE = "{R}/curve/{{target}}/{{arch}}/{{loss}}/seed{{seed}}/steps{{steps}}_data{{data}}"
CURVE_DIR = CURVE_BASE.format(R=R)


def curve_dirs():
    """One folder per point: every ``steps`` at all the data, every fraction at train.steps."""
    if CURVE is None:
        raise WorkflowError("the config has no learning_curve section (see configs/default.yaml)")
    target = next(iter(CFG.targets))
    points = {(s, 1.0) for s in CURVE.steps} | {(CFG.train.steps, f) for f in CURVE.data_fractions}
    base = f"{R}/curve/{target}/{CURVE.arch}/{loss_slug(CURVE.loss)}/seed{CURVE.seed}"
    return [f"{base}/steps{s}_data{f:g}" for s, f in sorted(points)]


def curve_loss(wc):
    return CURVE.loss if wc.loss == loss_slug(CURVE.loss) else LOSS_BY_SLUG[wc.loss]
