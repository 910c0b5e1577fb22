"""Prompt sources read with Hugging Face ``datasets``: the paper's Infinity-Instruct and GSM8K.

A ``data.sources`` entry of the config (:class:`DatasetSource`) replaces the
offline default of one domain's train or eval prompts (:mod:`specbench.data.domains`).

How much is read. The split is opened as an Arrow table that ``datasets`` memory-maps from disk
(a hub dataset is downloaded and converted once, into ``$HF_HOME/datasets``; a local data file is
converted there too; a ``save_to_disk`` folder is mapped as it is). Nothing is read into memory
up front: rows are then read in slices of :data:`SLICE_ROWS`, in stored order or in a seeded
permutation of the row indices (``shuffle_seed``; 8 bytes per row, 56 MB for Infinity-Instruct's
7M rows), only the text and filter columns, until ``n`` prompts are found. Streaming mode is not
used: it needs the network on every read, and our compute nodes have none.

Determinism: the same source, ``n`` and ``seed`` give the same prompts (the permutation is
numpy's, seeded with ``shuffle_seed + seed``). Rows without a usable text, rows that fail the
filter and repeated prompts are skipped; prompts are stripped of surrounding whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, field_validator

from specbench.data.domains import eval_prompts, get_domain, train_prompts
from specbench.data.splits import PROMPT_LISTS
from specbench.schema import Strict


class DatasetSource(Strict):
    """Where one domain's train or eval prompts come from instead of the offline default.

    ``dataset`` is a hub id (``openai/gsm8k``), a folder written by ``save_to_disk``, a folder of
    data files (e.g. a downloaded hub snapshot, whose README names the configs), or one
    ``.jsonl``/``.json``/``.parquet``/``.csv`` file. ``field`` is the text column, or a path
    into a nested one (``conversation[0].content``, :func:`resolve_field`); a chat (``[{"from":
    "human", "value": ...}]`` or ``[{"role": "user", "content": ...}]``) gives its first user
    turn. ``filter`` keeps rows whose columns equal the given values (all of them).
    ``allow_fewer``: when the source has fewer usable distinct prompts than asked for, take all
    of them (the log says how many) instead of failing; for "every prompt of the dataset" ask
    for at least its row count.
    """

    dataset: str = Field(min_length=1)
    config: str | None = None  # hub config name; quote it in YAML (0625 is the number 405)
    split: str = Field("train", min_length=1)
    field: str = Field(min_length=1)
    filter: dict[str, str | int | float | bool] = Field(default_factory=dict)
    shuffle_seed: StrictInt | None = None  # None: rows in stored order (YAML true is no seed)
    allow_fewer: bool = False

    @field_validator("config", mode="before")
    @classmethod
    def _config_is_text(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"config must be a string: quote it in the YAML (got {v!r})")
        return v

    @field_validator("field")
    @classmethod
    def _field_path(cls, v: str) -> str:
        parse_field(v)  # raises on a malformed path
        return v

    def describe(self) -> str:
        """A one-line name of this source for logs and the prompts payload."""
        name = self.dataset + (f"[{self.config}]" if self.config else "")
        extra = "".join(f",{k}={v}" for k, v in self.filter.items())
        seed = "" if self.shuffle_seed is None else f",shuffle_seed={self.shuffle_seed}"
        return f"{name}:{self.split}/{self.field}{extra}{seed}"


class CompletionsSource(DatasetSource):
    """A target's released completions: prompts and the target's responses, from ``datasets``.

    ``field`` is the prompt (a path such as ``conversation[0].content``, or a chat column whose
    first user turn is the prompt), ``response_field`` the target's response (a string, or
    OpenAI-style content parts). The defaults are the schema of the LK authors' releases
    (collection ``nebius/infinity-instruct-completions``): ``conversation: [{role, content}]``
    and ``generated_message: {role, content}``. Read by :mod:`specbench.data.completions`.
    """

    field: str = Field("conversation[0].content", min_length=1)
    response_field: str = Field("generated_message.content", min_length=1)

    @field_validator("response_field")
    @classmethod
    def _response_path(cls, v: str) -> str:
        parse_field(v)  # raises on a malformed path
        return v

    def describe(self) -> str:
        """The prompt source's name, then ``->`` and the response field."""
        return f"{super().describe()}->{self.response_field}"


DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
USER_ROLES = ("human", "user")
SLICE_ROWS = 1024


def missing_dataset_message(source: DatasetSource, reason: str, what: str = "prompt") -> str:
    """What to do when a configured dataset cannot be loaded without the network.

    ``what`` names the kind of dataset in the first line (``prompt``, ``completions``).
    """
    name, config = source.dataset, source.config
    load = f"datasets.load_dataset({name!r}, {config!r}, split={source.split!r})"
    return (
        f"cannot load the {what} dataset {source.describe()}: {reason}\n"
        "Jobs run without network, so the dataset must already be on disk. Either:\n"
        f"  1. on a machine with network: `huggingface-cli download --repo-type dataset {name} "
        "--local-dir DIR` (`hf download ...` with huggingface_hub >= 1.0), then set "
        "`dataset: DIR` in the config (keep `config:`);\n"
        f"  2. or there, with the jobs' HF_HOME on a shared filesystem, run "
        f'`python -c "import datasets; {load}"` once, and start the jobs with '
        "HF_DATASETS_OFFLINE=1 (they read the copy prepared in $HF_HOME/datasets);\n"
        "  3. or point `dataset:` at a local .jsonl/.json/.parquet/.csv file or a folder "
        "written by Dataset.save_to_disk.\n"
        "See docs/cluster.md, 'Prompt datasets'."
    )


def _looks_local(dataset: str) -> bool:
    """A path, not a hub id (hub ids are ``name`` or ``namespace/name``)."""
    return dataset.startswith(("/", ".", "~")) or dataset.count("/") > 1


def _from_disk(datasets: Any, path: Path, source: DatasetSource) -> Any:
    """A ``save_to_disk`` folder: a Dataset as it is, or the split of a DatasetDict."""
    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if source.split not in saved:
            raise ValueError(f"{source.describe()}: no split {source.split!r}; has {list(saved)}")
        return saved[source.split]
    return saved


def open_dataset(source: DatasetSource, what: str = "prompt") -> Any:
    """The ``datasets.Dataset`` (memory-mapped Arrow) of a source's split.

    Raises FileNotFoundError with download instructions (:func:`missing_dataset_message`,
    naming a ``what`` dataset) when the data is not on disk.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "data.sources needs the `datasets` package: pip install -e '.[hub]'"
        ) from err
    path = Path(source.dataset).expanduser()
    builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
    if builder is not None:
        if not path.is_file():
            raise FileNotFoundError(missing_dataset_message(source, f"no file {path}", what))
        files = {source.split: str(path)}
        return datasets.load_dataset(builder, data_files=files, split=source.split)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _from_disk(datasets, path, source)
        return datasets.load_dataset(str(path), source.config, split=source.split)
    if _looks_local(source.dataset):
        reason = f"no file or folder {path}"
        raise FileNotFoundError(missing_dataset_message(source, reason, what))
    try:
        return datasets.load_dataset(source.dataset, source.config, split=source.split)
    except (ConnectionError, FileNotFoundError) as err:  # no network, not cached, or no such id
        reason = f"{type(err).__name__}: {err}"
        raise FileNotFoundError(missing_dataset_message(source, reason, what)) from err


def content_text(content: Any) -> str | None:
    """Text of a chat turn's content: a string, or OpenAI-style parts ``[{"type": "text"}]``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str)) or None
    return None


def prompt_text(value: Any) -> str | None:
    """The prompt in one cell: the string itself, or a chat's first human/user turn.

    Chats are lists of ``{"from": "human"|"gpt", "value": ...}`` (ShareGPT, Infinity-Instruct)
    or ``{"role": "user"|"assistant", "content": ...}`` (OpenAI). None when there is no text.
    """
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"expected a string or a list of chat turns, got {type(value).__name__}")
    for turn in value:
        if not isinstance(turn, dict):
            raise ValueError(f"chat turns must be mappings, got {type(turn).__name__}")
        role = turn.get("from") if turn.get("from") is not None else turn.get("role")
        if role in USER_ROLES:
            text = turn.get("value") if turn.get("value") is not None else turn.get("content")
            return content_text(text)
    return None


FIELD_STEP = re.compile(r"\.([^.\[\]]+)|\[(-?\d+)\]")  # .key or [index]


def parse_field(path: str) -> tuple[str, list[str | int]]:
    """A field path's column and the steps into its cells: ``conversation[0].content`` →
    ``("conversation", [0, "content"])``; a plain column name has no steps.

    Steps are ``.key`` (a mapping's key) and ``[i]`` (a list's item, negative from the end).
    """
    column = re.match(r"[^.\[\]]+", path)
    if column is None:
        raise ValueError(f"bad field path {path!r}: it must start with a column name")
    steps: list[str | int] = []
    pos = column.end()
    while pos < len(path):
        m = FIELD_STEP.match(path, pos)
        if m is None:
            raise ValueError(
                f"bad field path {path!r} at character {pos}: use column(.key|[index])*, "
                "e.g. conversation[0].content"
            )
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return column.group(), steps


def resolve_field(cell: Any, steps: list[str | int]) -> Any:
    """Follow a field path's steps (:func:`parse_field`) into one cell; None where one is missing.

    A missing key, an index out of range, or a step into something that is not a mapping or
    a list gives None (the row is then skipped as having no usable text), not an error.
    """
    for step in steps:
        if isinstance(step, int):
            if not isinstance(cell, list) or not -len(cell) <= step < len(cell):
                return None
            cell = cell[step]
        else:
            if not isinstance(cell, dict):
                return None
            cell = cell.get(step)
    return cell


def open_rows(
    source: DatasetSource, fields: list[str], seed: int = 0, what: str = "prompt"
) -> tuple[int, Iterator[tuple[int, list[Any]]]]:
    """The split's row count, and ``(row number, [value of each field path])`` of its rows that
    pass the source's filter.

    Reads only the fields' columns and the filter's, :data:`SLICE_ROWS` rows at a time, in
    stored order or in the seeded permutation (``shuffle_seed + seed``); the row number is its
    position in that order. Raises ValueError naming the columns when one is missing.
    """
    ds = open_dataset(source, what)
    paths = [parse_field(f) for f in fields]
    columns = list(dict.fromkeys([*(col for col, _ in paths), *source.filter]))
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source.describe()}: no column(s) {missing}; has {ds.column_names}")
    ds = ds.select_columns(columns)
    if source.shuffle_seed is not None:
        ds = ds.shuffle(seed=source.shuffle_seed + seed, keep_in_memory=True)

    def rows() -> Iterator[tuple[int, list[Any]]]:
        for start in range(0, len(ds), SLICE_ROWS):
            batch = ds[start : start + SLICE_ROWS]
            for i in range(len(batch[columns[0]])):
                if any(batch[col][i] != want for col, want in source.filter.items()):
                    continue
                yield start + i, [resolve_field(batch[col][i], steps) for col, steps in paths]

    return len(ds), rows()


def load_prompts(source: DatasetSource, n: int, seed: int = 0, log=print) -> list[str]:
    """The first ``n`` distinct prompts of a source, in stored or seeded-shuffled order.

    ``seed`` is added to ``source.shuffle_seed`` (ignored when that is None). Raises ValueError
    when fewer than ``n`` usable prompts exist (unless ``source.allow_fewer``: then all of
    them, logged), FileNotFoundError when the data is not on disk.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    prompts: list[str] = []
    seen: set[str] = set()
    total, rows = open_rows(source, [source.field], seed)
    for number, (value,) in rows:
        try:
            text = prompt_text(value)
        except ValueError as err:
            raise ValueError(f"{source.describe()}: row {number}: {err}") from None
        text = (text or "").strip()
        if text and text not in seen:
            seen.add(text)
            prompts.append(text)
            if len(prompts) == n:
                return prompts
    short = (
        f"{source.describe()}: only {len(prompts)} usable distinct prompts in {total} rows "
        f"(after the filter {source.filter or 'none'}), asked for {n}"
    )
    if not source.allow_fewer or not prompts:
        raise ValueError(short)
    log(f"{short}: taking all {len(prompts)} (allow_fewer)")
    return prompts


NO_TRAINING = "none (0 training prompts)"


def split_prompts(
    domain: str, split: str, n: int, source: DatasetSource | None, seed: int = 0, log=print
) -> tuple[list[str], str]:
    """Prompts of one domain's split and the name of their source.

    The configured ``source`` wins; None keeps the domain's offline default. ``n = 0`` (a
    domain that contributes no training prompts) gives none, whatever the source.
    """
    if n == 0:
        return [], NO_TRAINING
    if source is not None:
        return load_prompts(source, n, seed, log), source.describe()
    if split == "train":
        return train_prompts(domain, n, seed), get_domain(domain).train_source
    if split == "eval":
        return eval_prompts(domain, n), get_domain(domain).eval_source
    raise ValueError(f"unknown prompt list {split!r}; valid: {list(PROMPT_LISTS)}")


def drop_overlap(train: list[str], eval_: list[str]) -> tuple[list[str], int]:
    """Training prompts that are not evaluation prompts, and how many were dropped."""
    held_out = set(eval_)
    kept = [p for p in train if p not in held_out]
    return kept, len(train) - len(kept)


def domain_prompts(
    domain: str,
    n_train: int,
    n_eval: int,
    train_source: DatasetSource | None = None,
    eval_source: DatasetSource | None = None,
    log=print,
) -> dict[str, Any]:
    """A domain's disjoint ``train`` and ``eval`` prompt lists, and where they came from.

    A configured source wins over the domain's offline default; training prompts that are
    also evaluation prompts are dropped (and counted), so the two lists never overlap.
    ``n_train = 0``: the domain is only evaluated (an empty ``train`` list).
    """
    ev, eval_name = split_prompts(domain, "eval", n_eval, eval_source, log=log)
    tr, train_name = split_prompts(domain, "train", n_train, train_source, log=log)
    log(f"{domain}: train prompts from {train_name}, eval prompts from {eval_name}")
    tr, dropped = drop_overlap(tr, ev)
    log(f"{domain}: dropped {dropped} training prompts that are also evaluation prompts")
    if set(tr) & set(ev):
        raise AssertionError("train/eval prompts overlap")
    return {
        "domain": domain,
        "eval_source": eval_name,
        "train_source": train_name,
        "train_dropped_as_eval": dropped,
        "train": tr,
        "eval": ev,
    }
