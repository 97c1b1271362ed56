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

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .capture.gather import ExampleRecord, PendingRows, schema, tables_for
from .capture.heads import HeadSelection, select_heads
from .capture.models import ModelLayout, attention_backend, text_config
from .capture.points import CapturePoint
from .capture.probe import check_loaded_model
from .capture.rows import Block
from .capture.samplers import KINDS, SAMPLERS, Sampler, build_sampler
from .capture.session import CaptureSession
from .capture.shapes import loaded_layout
from .core.config import CaptureConfig, HeadSamplingConfig
from .core.errors import UserError
from .core.naming import config_name, name_widths
from .inputs import tokenization
from .inputs.data import DataStats, batches
from .inputs.given import GivenInputs
from .inputs.tokenization import pad_id
from .pipeline.recorded import recording_metadata, write_recorded
from .pipeline.validate import capture_problems

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
        self.layout: ModelLayout = loaded_layout(model)
        self.selection: HeadSelection = select_heads(capture_cfg, self.layout)
        self._inputs = GivenInputs(tokenizer, int(text_config(model.config).vocab_size), max_length)
        self._attn_implementation = attention_backend(model)
        check_loaded_model(model)  # a backend this release runs wrong; the probe on a release not measured
        self._widths = name_widths(self.layout.num_layers, self.layout.max_heads)
        self._token_strings = (
            tokenization.token_strings(tokenizer)
            if capture_cfg.token_strings and tokenizer is not None
            else None
        )
        self._blocks: dict[tuple[int, str], list[Block]] = {}
        # Every example captured so far, as a commit records it: written with the rows by :meth:`write`.
        self._records: list[ExampleRecord] = []
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
    def stats(self) -> DataStats:
        """Examples, tokens and skipped empty inputs seen so far."""
        return self._inputs.stats

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
        examples = self._inputs.examples(inputs, example_ids)
        before = self.rows
        for batch, blocks, _ in session.stream(
            batches(examples, self.batch_size, pad_id(self.tokenizer), self.stats)
        ):
            self._add(blocks)
            self._records += [(e.index, e.example_id, e.length, e.token_hash, ()) for e in batch.examples]
        return self.rows - before

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
        for layer in self.selection.layers:
            empty = schema(self.layout.head_dim_of(layer), self._token_strings is not None).empty_table()
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
        configs = sorted(config_name(layer, head, kind, *self._widths) for layer, head, kind in self._keys())
        write_recorded(
            root,
            self._metadata(dataset),
            configs,
            self._records,
            self._blocks,
            self._widths,
            self._token_strings,
            self.stats,
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
        return recording_metadata(
            model_name=self.model.config.name_or_path or None,
            model_type=self.model.config.model_type,
            dtype=str(next(self.model.parameters()).dtype).removeprefix("torch."),
            tokenizer_name=getattr(self.tokenizer, "name_or_path", None) or None,
            max_length=self.max_length,
            dataset=dataset,
            layout=self.layout,
            selection=self.selection,
            sampler=self.sampler,
            capture_cfg=self.capture_cfg,
            attn_implementation=self._attn_implementation,
            stats=self.stats,
        )


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
