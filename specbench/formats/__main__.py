"""``python -m specbench.formats export|import ...``: convert drafts on the command line.

    export DRAFT_DIR OUT_DIR --format F --target MODEL [--vocab VOCAB_JSON] [--k K]
    import FORMAT PATH OUT_DIR --target MODEL [--vocab VOCAB_JSON]
    table    (the README's formats table, from the registry)

``MODEL`` is the target (hub id in the local cache, or folder); ``VOCAB_JSON`` the run's
draft vocabulary (default, for a DRAFT_DIR ``results/drafts/<target>/<arch>/<loss>/seedN``:
``results/data/vocab/<target>/<vocabulary>.json``, the architecture's reference vocabulary or
an external draft's own; without one, the full vocabulary).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from specbench.artifacts import EXTERNAL_SLUG, vocab_ids
from specbench.drafts import load_draft
from specbench.formats import (
    FORMATS,
    IMPORT_ARCHS,
    FormatError,
    export_draft,
    formats_markdown,
    load_external,
)
from specbench.targets.info import target_info_from_checkpoint


def default_vocab(draft_dir: str) -> Path | None:
    """The run's vocabulary file for ``results/drafts/<target>/<arch>/<loss>/seedN``: an
    external draft's own, else its architecture's reference vocabulary (a config's
    ``arch_vocab`` override is not known here: pass ``--vocab``)."""
    from specbench.drafts import DRAFTS

    parts = Path(draft_dir).resolve().parents
    if len(parts) <= 4 or parts[3].name != "drafts" or parts[1].name not in DRAFTS:
        return None
    folder = parts[4] / "data" / "vocab" / parts[2].name
    names = [parts[0].name] if parts[0].name.startswith(EXTERNAL_SLUG) else []
    names.append(DRAFTS[parts[1].name].reference_vocab)
    found = [folder / f"{n}.json" for n in names if (folder / f"{n}.json").exists()]
    return found[0] if found else None


def vocab_tensor(path: str | Path | None) -> torch.Tensor | None:
    if path is None:
        return None
    return torch.tensor(vocab_ids(path), dtype=torch.long)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m specbench.formats", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a trained draft in a peer's format")
    exp.add_argument("draft_dir")
    exp.add_argument("out_dir")
    exp.add_argument("--format", required=True, help=f"one of {FORMATS}")
    exp.add_argument("--k", type=int, default=6, help="speculative tokens to record")
    imp = sub.add_parser("import", help="read a peer's checkpoint into specbench's format")
    imp.add_argument("format", help=f"one of {sorted(IMPORT_ARCHS)}")
    imp.add_argument("path")
    imp.add_argument("out_dir")
    sub.add_parser("table", help="print the README's formats table (from the registry)")
    for p in (exp, imp):
        p.add_argument("--target", required=True, help="target hub id or folder")
        p.add_argument("--vocab", default=None, help="the run's draft-vocabulary JSON")
    args = parser.parse_args(argv)
    if args.command == "table":
        print(formats_markdown(), end="")
        return
    try:
        if args.command == "export":
            vocab = args.vocab or default_vocab(args.draft_dir)
            info = target_info_from_checkpoint(args.target, vocab_tensor(vocab))
            draft = load_draft(args.draft_dir, info)
            out = export_draft(draft, info, args.out_dir, args.format, args.target, args.k)
        else:
            info = target_info_from_checkpoint(args.target, vocab_tensor(args.vocab))
            draft = load_external(args.format, args.path, info)
            from specbench.io import atomic_dir

            with atomic_dir(args.out_dir) as tmp:
                draft.save(tmp)
            out = Path(args.out_dir)
    except FormatError as err:
        raise SystemExit(f"error: {err}") from None
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
