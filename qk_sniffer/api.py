"""Capture query/key vectors from a model you already loaded, e.g. in a notebook.

This is the Python face of the same capture path the command line uses (:class:`~qk_sniffer.capture.session.
CaptureSession`): the same samplers, head selection, pre/post-RoPE switch, Parquet layout and dataset card.

Example::

    import qk_sniffer

    with qk_sniffer.attach(model, tokenizer, sampler="all", layers=[0, 1]) as cap:
        cap.run(["first text", "second text"])
    tables = cap.tables()            # {(layer, head, "q" | "k"): pyarrow.Table}
    cap.write("captures/my-model")   # the CLI's Parquet layout plus README.md dataset card

Everything :func:`attach` patches (transformers' attention registry, the model config's attention backend,
the rotary function for pre-RoPE capture) is restored when the ``with`` block ends, also on an exception.
Only one capture may be attached at a time in a process; a second one raises
:class:`~qk_sniffer.capture.tap.CaptureSessionActiveError`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .capture.gather import ExampleRecord, PendingRows, schema, tables_for
from .capture.heads import HeadSelection, select_heads
from .capture.models import ModelLayout, attention_backend, layout_from_config, text_config
from .capture.points import CapturePoint
from .capture.rows import Block
from .capture.samplers import KINDS, SAMPLERS, Sampler, build_sampler
from .capture.session import CaptureSession
from .core.config import (
    CaptureConfig,
    Config,
    DatasetConfig,
    HeadSamplingConfig,
    ModelConfig,
    TokenizerConfig,
)
from .core.errors import UserError
from .core.naming import config_name, name_widths
from .inputs import tokenization
from .inputs.data import DataStats, Example, batches, make_example, stable_id
from .inputs.tokenization import encoder, pad_id
from .pipeline.validate import capture_problems
from .pipeline.weights import checkpoint_digest, local_checkpoint
from .publish import documents
from .publish.metadata import final_metadata, run_metadata
from .store import RunInfo, Store
from .store.manifest import model_identity, recipe_id, recipe_of
from .store.writer import PartWriter

TableKey = tuple[int, int, str]


class Recording:
    """Captured query/key rows of one model; attach it with ``with`` and feed it texts with :meth:`run`.

    Create it with :func:`attach`. Inside the ``with`` block call :meth:`run` as often as you like; the rows
    accumulate in host memory. :meth:`tables` and :meth:`write` work inside or after the block.

    Attributes:
        layout: the model's attention layout (layers, heads, head_dim, sliding windows, RoPE).
        selection: the (layer, head) pairs captured, per kind (``selection.q_heads``, ``selection.k_heads``).
        sampler: the position sampler.
        stats: examples, tokens and skipped empty inputs seen so far.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        sampler: Sampler,
        capture_cfg: CaptureConfig,
        *,
        max_length: int | None,
        batch_size: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.capture_cfg = capture_cfg
        self.max_length = max_length
        self.batch_size = batch_size
        self.layout: ModelLayout = layout_from_config(model.config)
        self.selection: HeadSelection = select_heads(capture_cfg, self.layout)
        self.stats = DataStats()
        self._vocab_size = int(text_config(model.config).vocab_size)
        self._attn_implementation = attention_backend(model)
        self._widths = name_widths(
            self.layout.num_layers, max(self.layout.num_q_heads, self.layout.num_kv_heads)
        )
        self._token_strings = (
            tokenization.token_strings(tokenizer)
            if capture_cfg.token_strings and tokenizer is not None
            else None
        )
        self._blocks: dict[tuple[int, str], list[Block]] = {}
        # Every example captured so far, as a commit records it: written with the rows by :meth:`write`.
        self._records: list[ExampleRecord] = []
        self._next_index = 0
        # Example ids captured so far: a repeat would give (example_id, position) twice in one dataset.
        self._ids: dict[int, int] = {}
        self._session: CaptureSession | None = None
        # pre_rope / post_rope, named as in the metadata and the card.
        self.capture_point = CapturePoint.of(capture_cfg.pre_rope)
        self._written: set[Path] = set()

    def __enter__(self) -> Recording:
        if self._session is not None:
            raise UserError("this capture is already attached; use the object the outer `with` gave you")
        session = CaptureSession(self.model, self.selection, self.sampler, pre_rope=self.capture_cfg.pre_rope)
        session.__enter__()  # raises CaptureSessionActiveError while another capture is attached
        self._session = session
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.__exit__(exc_type, exc, tb)

    @property
    def attached(self) -> bool:
        """True inside the ``with`` block."""
        return self._session is not None

    @property
    def rows(self) -> int:
        """Rows captured so far, summed over every (layer, head, kind)."""
        return sum(
            b.vectors.shape[0] * b.vectors.shape[1] for blocks in self._blocks.values() for b in blocks
        )

    def run(self, inputs: Sequence[str | Sequence[int]], example_ids: Sequence[Any] | None = None) -> int:
        """Run the model over ``inputs`` and keep the sampled query/key rows; returns the rows added.

        Args:
            inputs: texts (tokenized with the tokenizer given to :func:`attach`, special tokens included, as
                the CLI does) and/or lists of token ids. Longer inputs are cut to ``max_length`` tokens. Empty
                or blank inputs are skipped and counted in ``stats.skipped_empty``.
            example_ids: one id per input: integers are kept, anything else is hashed to a stable int64 (as
                the CLI's ``dataset.id_column``). Default: the input's position, counted on across calls
                (0, 1, ... in the first call), which matches the CLI's row index over the same texts.

        The sampled positions depend only on (example id, layer, kind) and the input's length, so the same
        input gives the same rows here and in the CLI, whatever the batch size.
        """
        session = self._session
        if session is None:
            raise UserError(
                "Recording.run needs an attached capture: call it inside `with qk_sniffer.attach(...)`"
            )
        if isinstance(inputs, (str, bytes)):
            raise UserError("Recording.run takes a list of texts or token-id lists, not a single string")
        if example_ids is not None and len(example_ids) != len(inputs):
            raise UserError(f"example_ids has {len(example_ids)} entries for {len(inputs)} inputs")
        examples = self._examples(inputs, example_ids)
        self._next_index += len(inputs)
        before = self.rows
        for batch, blocks, _ in session.stream(
            batches(examples, self.batch_size, pad_id(self.tokenizer), self.stats)
        ):
            self._add(blocks)
            self._records += [(e.index, e.example_id, e.length, e.token_hash, ()) for e in batch.examples]
        return self.rows - before

    def _examples(
        self, inputs: Sequence[str | Sequence[int]], example_ids: Sequence[Any] | None
    ) -> list[Example]:
        """Tokenize and check every input first, so a bad one fails the call before anything is captured."""
        encode = encoder(self.tokenizer) if self.tokenizer is not None else None
        examples = []
        counts = DataStats()  # applied to self.stats only once every input passed its checks
        ids_here: dict[int, int] = {}  # likewise for the ids
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                if encode is None:
                    raise UserError(f"inputs[{i}] is a text but no tokenizer was given to qk_sniffer.attach")
                ids = encode(item) if item.strip() else []
            else:
                ids = [int(t) for t in item]
                bad = [t for t in ids if not 0 <= t < self._vocab_size]
                if bad:
                    raise UserError(
                        f"inputs[{i}]: token id {bad[0]} is outside the model's vocabulary "
                        f"(0..{self._vocab_size - 1})"
                    )
            example_id = self._example_id(i, example_ids, ids_here)
            example = make_example(self._next_index + i, example_id, ids, self.max_length, counts)
            if example is not None:
                examples.append(example)
        self.stats.skipped_empty += counts.skipped_empty
        self.stats.truncated += counts.truncated
        self._ids.update(ids_here)
        return examples

    def _example_id(self, i: int, example_ids: Sequence[Any] | None, ids_here: dict[int, int]) -> int:
        """The id of input ``i``; a null id, or one already used in this capture or call, is refused."""
        if example_ids is None:
            example_id = self._next_index + i
        elif example_ids[i] is None:
            raise UserError(f"example_ids[{i}] is None; every input needs its own id")
        else:
            example_id = stable_id(example_ids[i])
        if example_id in self._ids or example_id in ids_here:
            raise UserError(
                f"example_ids[{i}]={example_ids[i] if example_ids is not None else example_id!r} was already "
                "used in this capture; ids must be unique (rows would repeat)"
            )
        ids_here[example_id] = i
        return example_id

    def _add(self, blocks: list[Block]) -> None:
        for block in blocks:
            self._blocks.setdefault((block.layer, block.kind), []).append(block)

    def tables(self) -> dict[TableKey, pa.Table]:
        """Every captured (layer, head, kind) as an Arrow table, kind being ``"q"`` or ``"k"``.

        Columns as in the Parquet output: ``bucket`` (int32), ``example_id`` (int64), ``position`` (int32),
        ``vector`` (fixed_size_list<float32>[head_dim]), ``sliding_window`` (int32, null on full-attention
        layers), and ``token_str`` with ``token_strings=True``. Rows are in input order, then position order.
        A selected head that no position was sampled for gives an empty table.
        """
        out: dict[TableKey, pa.Table] = {}
        empty = schema(self.layout.head_dim, self._token_strings is not None).empty_table()
        for layer in self.selection.layers:
            for kind in KINDS:
                heads = self.selection.heads(layer, kind)
                if not heads:
                    continue
                by_name = tables_for(
                    PendingRows(self._blocks.get((layer, kind), [])), self._widths, self._token_strings
                )
                for head in heads:
                    out[(layer, head, kind)] = by_name.get(
                        config_name(layer, head, kind, *self._widths), empty
                    )
        return out

    def write(
        self,
        out_dir: str | Path,
        *,
        dataset: str | None = None,
        repo_id: str | None = None,
        branch: str | None = None,
    ) -> Path:
        """Write everything captured so far as the CLI would: ``l{LL}h{HH}{q|k}/*.parquet``, ``README.md``
        (dataset card) and ``qk_sniffer.json`` (metadata). Returns the directory.

        Args:
            out_dir: a new or empty directory, or one holding a capture of the same model (rows are added).
            dataset: what the texts were (e.g. a Hub dataset id), recorded in the card.
            repo_id, branch: where the data will be published, used in the card's loading snippet.

        Loadable afterwards with ``datasets.load_dataset(out_dir, "l00h00q", split="train")``.
        """
        root = Path(out_dir).expanduser().resolve()
        if root in self._written:
            raise UserError(
                f"out_dir={str(root)!r}: this capture was written there already; rows would repeat"
            )
        metadata = self._metadata(dataset)
        store = Store(root)
        recipe = recipe_of(metadata)
        rid = recipe_id(recipe)
        configs = sorted(config_name(layer, head, kind, *self._widths) for layer, head, kind in self._keys())
        run_id = uuid.uuid4().hex[:12]
        info = RunInfo(run_id, rid, (0, 1), configs)
        # Every example completes every config: the commit says so, as a CLI run's commits do.
        examples = [(i, eid, n, digest, tuple(configs)) for i, eid, n, digest, _ in self._records]
        with store.registered(info, recipe, model_identity(metadata), "append"):
            store.new_examples_check(rid, configs, {e[1] for e in examples})
            writer = PartWriter(root, "api", run_id, store.committer(rid, run_id, "api"))
            blocks = {key: PendingRows(list(b)) for key, b in self._blocks.items()}

            def tables() -> Any:
                for pending in blocks.values():
                    yield from tables_for(pending, self._widths, self._token_strings).items()

            try:
                writer.submit(tables, examples)
            finally:
                writer.close()
            documents.settle(
                store,
                lambda: final_metadata(store, metadata, rid, self.stats),
                repo_id=repo_id,
                branch=branch,
            )
        self._written.add(root)
        return root

    def _keys(self) -> list[TableKey]:
        return [
            (layer, head, kind)
            for layer in self.selection.layers
            for kind in KINDS
            for head in self.selection.heads(layer, kind)
        ]

    def _metadata(self, dataset: str | None) -> dict[str, Any]:
        """The run metadata the CLI records, for a model and texts handed over in Python."""
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        name = self.model.config.name_or_path or None
        cfg = Config(
            # Without a name (a model built from a config) the card and branch fall back to the family.
            model=ModelConfig(name=name, slug=None if name else self.layout.model_type, dtype=dtype),
            tokenizer=TokenizerConfig(
                name=getattr(self.tokenizer, "name_or_path", None) or None, max_length=self.max_length
            ),
            dataset=DatasetConfig(path=dataset),  # type: ignore[arg-type] # None: texts from Python
            sampler={"name": self.sampler.name, **self.sampler.params()},
            capture=self.capture_cfg,
        )  # output and tracking stay unset: run_metadata reads neither
        metadata = run_metadata(cfg, self.layout, self.selection, self.sampler)
        checkpoint = local_checkpoint(cfg.model)
        if checkpoint is not None:  # loaded from a local dir: identified by its files, as a CLI run is
            metadata["weights"] = checkpoint_digest(checkpoint)
        metadata.update(
            attn_implementation=self._attn_implementation,
            examples=self.stats.examples,
            tokens=self.stats.tokens,
            skipped_empty=self.stats.skipped_empty,
        )
        return metadata


def attach(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    sampler: str = "log_bucket",
    sampler_params: Mapping[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    head_count: int | None = None,
    head_seed: int = 0,
    full_attention_only: bool = False,
    pre_rope: bool = False,
    queries: bool = True,
    keys: bool = True,
    token_strings: bool = False,
    max_length: int | None = None,
    batch_size: int = 1,
) -> Recording:
    """Prepare a capture of ``model``'s query/key vectors; use the result in a ``with`` block.

    The options are the CLI's config keys:

    Args:
        model: a loaded ``transformers`` causal LM, any attention backend (for vision-language wrappers, their
            text decoder is captured).
        tokenizer: needed to pass texts to :meth:`Recording.run` and for ``token_strings``.
        sampler: ``"log_bucket"``, ``"uniform"`` or ``"all"`` (``sampler=`` in the CLI).
        sampler_params: that sampler's keys, e.g. ``{"base_rate": 1.0, "bucket_size": 8192}`` for uniform.
        layers, heads: only these layers / query heads (``capture.layers`` / ``capture.heads``).
        head_count, head_seed: sample this many (layer, query head) pairs with this seed
            (``capture.head_sampling.count`` / ``.seed``); their key heads come along.
        full_attention_only: skip sliding-window layers (``capture.full_attention_only``).
        pre_rope: vectors before the rotation, after any q/k norm (``capture.pre_rope``).
        queries, keys: which kinds to capture (``capture.queries`` / ``capture.keys``).
        token_strings: add a ``token_str`` column (``capture.token_strings``; needs ``tokenizer``).
        max_length: cut inputs to this many tokens (``tokenizer.max_length``).
        batch_size: inputs per forward, right-padded (``inference.batch_size``); rows do not depend on it.

    Raises:
        UserError: for an option the model or the samplers cannot honour (the message names it).
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if max_length is not None and max_length < 1:
        raise UserError(f"max_length must be >= 1 or None, got {max_length}")
    if token_strings and tokenizer is None:
        raise UserError("token_strings=True needs a tokenizer")
    if not isinstance(model, PreTrainedModel):
        raise UserError(f"model must be a loaded transformers model, got {type(model).__name__}")
    params = dict(sampler_params or {})
    known = [f.name for f in fields(SAMPLERS.get(sampler)) if f.name != "name"]  # unknown names raise here
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise UserError(
            f"sampler_params: {', '.join(map(repr, unknown))} is not a key of sampler {sampler!r}; "
            f"its keys are: {', '.join(known)}"
        )
    built = build_sampler({"name": sampler, **params})
    capture_cfg = CaptureConfig(
        layers=list(layers) if layers is not None else None,
        heads=list(heads) if heads is not None else None,
        head_sampling=HeadSamplingConfig(count=head_count, seed=head_seed),
        full_attention_only=full_attention_only,
        pre_rope=pre_rope,
        queries=queries,
        keys=keys,
        token_strings=token_strings,
    )
    problems = capture_problems(capture_cfg)
    if problems:  # worded with the CLI's keys, which the docstring maps to these arguments
        raise UserError("; ".join(problems))
    return Recording(model, tokenizer, built, capture_cfg, max_length=max_length, batch_size=batch_size)
