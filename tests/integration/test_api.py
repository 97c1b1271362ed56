"""The Python API: exact vectors against the model's own eager forward, the same rows and files as the CLI,
everything restored on exit (also on exceptions), and a second attached capture refused."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch
from helpers import TEXTS, compose_cfg, embedded_tokenizer, read_configs, save_checkpoint, write_jsonl
from reference import check_table, eager_reference
from tiny_models import EMBEDDED_VOCAB, tiny_model
from transformers import AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

import qk_sniffer
from qk_sniffer.capture.tap import CaptureSessionActiveError
from qk_sniffer.core.errors import UserError
from qk_sniffer.core.naming import config_name
from qk_sniffer.pipeline.runner import run


def model_of(model_type: str) -> torch.nn.Module:
    return tiny_model(model_type, vocab_size=EMBEDDED_VOCAB)


def as_rows(table) -> dict[tuple[int, int], tuple[int, np.ndarray]]:
    """{(example_id, position): (bucket, vector)}"""
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32).reshape(table.num_rows, -1)
    keys = zip(table.column("example_id").to_pylist(), table.column("position").to_pylist(), strict=True)
    return {
        key: (bucket, vectors[i])
        for i, (key, bucket) in enumerate(zip(keys, table.column("bucket").to_pylist(), strict=True))
    }


def patch_state(model: torch.nn.Module) -> dict[str, object]:
    """Everything a capture session touches, to compare before and after."""
    modeling = sys.modules[type(model).__module__]
    return {
        "attn": model.config._attn_implementation,
        "text_attn": model.config.get_text_config()._attn_implementation,
        "layer_attn": [layer.self_attn.config._attn_implementation for layer in model.model.layers],
        "attention_names": sorted(AttentionInterface._global_mapping),
        "mask_names": sorted(AttentionMaskInterface._global_mapping),
        "rotary": modeling.apply_rotary_pos_emb,
    }


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "mistral"])
@pytest.mark.parametrize("pre_rope", [False, True])
def test_every_vector_matches_eager(model_type, pre_rope):
    model = model_of(model_type)
    tok = embedded_tokenizer()
    with qk_sniffer.attach(model, tok, sampler="all", pre_rope=pre_rope, batch_size=3) as cap:
        added = cap.run(TEXTS)  # batches of unequal lengths: 3 (right-padded) + 1
    ids = [tok(t)["input_ids"] for t in TEXTS]
    refs = [eager_reference(model, x) for x in ids]
    cfg = model.config
    tables = cap.tables()
    expected_keys = {
        (layer, h, "q") for layer in range(cfg.num_hidden_layers) for h in range(cfg.num_attention_heads)
    }
    expected_keys |= {
        (layer, h, "k") for layer in range(cfg.num_hidden_layers) for h in range(cfg.num_key_value_heads)
    }
    assert set(tables) == expected_keys
    checked = 0
    for (layer, head, kind), table in tables.items():
        # Every token of every example, in input order then position order.
        assert table.column("example_id").to_pylist() == [i for i, x in enumerate(ids) for _ in x]
        assert table.column("position").to_pylist() == [p for x in ids for p in range(len(x))]
        window = 8 if model_type == "mistral" else None
        assert set(table.column("sliding_window").to_pylist()) == {window}
        lengths = {i: len(x) for i, x in enumerate(ids)}
        check_table(table, dict(enumerate(refs)), lengths, layer, head, kind, pre_rope)
        checked += table.num_rows
    n_heads = cfg.num_attention_heads + cfg.num_key_value_heads
    assert checked == added == cap.rows == sum(map(len, ids)) * n_heads * cfg.num_hidden_layers
    if model_type == "mistral":  # texts longer than the 8-token window: the window must hold
        assert max(map(len, ids)) > 8


def test_same_rows_and_files_as_the_cli(tmp_path):
    """The CLI and the API are one capture path: the same texts give the same configs, rows and vectors."""
    ckpt = save_checkpoint(tmp_path, "qwen3")
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    cli_out = tmp_path / "cli"
    options = [
        "sampler=log_bucket",
        "sampler.base_rate=2.0",
        "capture.head_sampling.count=5",
        "capture.head_sampling.seed=3",
        "capture.token_strings=true",
        "tokenizer.max_length=20",
    ]
    run(
        compose_cfg(
            [
                f"model.name={ckpt}",
                "dataset=local",
                f"dataset.data_files={data}",
                f"output.dir={cli_out}",
                "inference.batch_size=2",
                *options,
            ]
        )
    )
    cli = read_configs(cli_out)

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32").eval()
    with qk_sniffer.attach(
        model,
        embedded_tokenizer(),
        sampler="log_bucket",
        sampler_params={"base_rate": 2.0},
        head_count=5,
        head_seed=3,
        token_strings=True,
        max_length=20,
        batch_size=3,
    ) as cap:
        cap.run(TEXTS[:1])
        cap.run(TEXTS[1:])  # default example ids count on across calls: 0, 1, 2, 3 as the CLI's row index
    tables = cap.tables()
    written = read_configs(cap.write(tmp_path / "api", dataset="my-texts"))

    names = {config_name(*key): key for key in tables}
    assert sorted(names) == sorted(cli) == sorted(written)
    assert sum(t.num_rows for t in cli.values()) > 0
    for name, key in names.items():
        assert as_rows(cli[name]).keys() == as_rows(tables[key]).keys() == as_rows(written[name]).keys()
        for row, (bucket, vector) in as_rows(cli[name]).items():
            api_bucket, api_vector = as_rows(tables[key])[row]
            assert api_bucket == bucket
            np.testing.assert_allclose(api_vector, vector, atol=1e-5)
        assert tables[key].column("token_str").to_pylist() == cli[name].column("token_str").to_pylist()
    card = (tmp_path / "api" / "README.md").read_text()
    assert "config_name: l" in card and "my-texts" in card
    assert (tmp_path / "api" / "qk_sniffer.json").exists()
    with pytest.raises(UserError, match="written there already"):
        cap.write(tmp_path / "api")


def test_rows_do_not_depend_on_batch_size_and_ids_are_kept():
    model = model_of("llama")
    tok = embedded_tokenizer()
    results = []
    for batch_size in (1, 4):
        with qk_sniffer.attach(
            model,
            tok,
            sampler="uniform",
            sampler_params={"bucket_size": 4},
            layers=[1],
            heads=[0, 3],
            batch_size=batch_size,
        ) as cap:
            cap.run(TEXTS, example_ids=["a", "b", 7, "d"])
        results.append(cap.tables())
    one, four = results
    assert set(one) == {(1, 0, "q"), (1, 3, "q"), (1, 0, "k"), (1, 1, "k")}
    for key in one:
        assert as_rows(one[key]).keys() == as_rows(four[key]).keys()
        assert 7 in set(one[key].column("example_id").to_pylist())  # integer ids are kept as they are
    assert 0 < one[(1, 0, "q")].num_rows < sum(len(tok(t)["input_ids"]) for t in TEXTS)


def test_token_ids_empty_inputs_and_truncation():
    model = model_of("qwen3")
    with qk_sniffer.attach(model, sampler="all", layers=[0], keys=False, max_length=3) as cap:
        assert cap.run([[5, 6, 7, 8, 9], [], [11]]) == (3 + 1) * model.config.num_attention_heads
    assert cap.stats.skipped_empty == 1 and cap.stats.truncated == 1
    table = cap.tables()[(0, 2, "q")]
    assert table.column("example_id").to_pylist() == [0, 0, 0, 2]
    assert table.column("position").to_pylist() == [0, 1, 2, 0]
    assert not any(kind == "k" for _, _, kind in cap.tables())


def test_everything_is_restored_on_exit_and_on_exceptions():
    model = model_of("llama")
    tok = embedded_tokenizer()
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        logits_before = model(ids).logits
    before = patch_state(model)

    with pytest.raises(RuntimeError, match="boom"), qk_sniffer.attach(model, tok, pre_rope=True) as cap:
        during = patch_state(model)
        assert during["attn"].startswith("qk_sniffer_") and during["rotary"] is not before["rotary"]
        assert all(impl.startswith("qk_sniffer_") for impl in during["layer_attn"])
        cap.run(TEXTS[:2])
        raise RuntimeError("boom")
    assert patch_state(model) == before

    # An exception in the middle of a forward (here from a layer's forward hook).
    def fail(*_):
        raise ValueError("layer failed")

    handle = model.model.layers[1].register_forward_hook(fail)
    try:
        with (
            pytest.raises(ValueError, match="layer failed"),
            qk_sniffer.attach(model, tok, pre_rope=True) as cap,
        ):
            cap.run(TEXTS[:1])
    finally:
        handle.remove()
    assert patch_state(model) == before
    assert not cap.attached
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits_before, rtol=0, atol=0)
    # The session lock was released: a new capture attaches and works.
    with qk_sniffer.attach(model, tok, layers=[0]) as cap:
        assert cap.run(TEXTS[:1]) > 0


def test_a_second_capture_is_refused_nested_or_concurrent():
    model, other = model_of("qwen3"), model_of("llama")
    tok = embedded_tokenizer()
    message = "a capture session is already active in this process; close it before opening another"
    with qk_sniffer.attach(model, tok, sampler="all", layers=[0]) as outer:
        with pytest.raises(CaptureSessionActiveError, match=message), qk_sniffer.attach(other, tok):
            pass
        with pytest.raises(UserError, match="already attached"), outer:
            pass
        errors: list[BaseException] = []

        def attach_in_thread() -> None:
            try:
                with qk_sniffer.attach(other, tok):
                    pass
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                errors.append(exc)

        thread = threading.Thread(target=attach_in_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], CaptureSessionActiveError)
        # The refused attempts left the outer capture working.
        assert outer.run(TEXTS[:1]) == len(tok(TEXTS[0])["input_ids"]) * 6
    assert patch_state(other)["attn"] == "sdpa"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"sampler": "uniformm"},
            "unknown sampler 'uniformm'; known: all, log_bucket, uniform. Did you mean 'uniform'?",
        ),
        (
            {"sampler": "uniform", "sampler_params": {"bucket": 8}},
            "sampler_params: 'bucket' is not a key of sampler 'uniform'; "
            "its keys are: base_rate, bucket_size",
        ),
        ({"sampler_params": {"base_rate": 0}}, "sampler.base_rate must be > 0, got 0"),
        ({"layers": [0, 9]}, "capture.layers: layer 9 is out of range; valid layers are 0..2"),
        ({"heads": [4]}, "capture.heads: head 4 is out of range; valid query heads are 0..3"),
        ({"head_count": 13}, "capture.head_sampling.count=13 exceeds the 12 query heads allowed"),
        ({"head_count": 0}, "capture.head_sampling.count must be >= 1"),
        ({"queries": False, "keys": False}, "capture.queries and capture.keys are both false"),
        ({"token_strings": True, "tokenizer": None}, "token_strings=True needs a tokenizer"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ],
)
def test_bad_options_name_themselves(kwargs, message):
    model = model_of("qwen3")
    kwargs = {"tokenizer": embedded_tokenizer(), **kwargs}
    with pytest.raises(UserError) as info:
        qk_sniffer.attach(model, **kwargs)
    assert message in str(info.value)
    assert patch_state(model)["attn"] == "sdpa"


def test_bad_inputs_capture_nothing():
    model = model_of("qwen3")
    cap = qk_sniffer.attach(model, layers=[0])
    with pytest.raises(UserError, match="inside `with qk_sniffer.attach"):
        cap.run([[1, 2]])
    with cap:
        with pytest.raises(UserError, match="is a text but no tokenizer was given"):
            cap.run(["some text"])
        with pytest.raises(UserError, match=r"inputs\[1\]: token id 512 is outside the model's vocabulary"):
            cap.run([[1, 2, 3], [4, 512]])
        with pytest.raises(UserError, match="not a single string"):
            cap.run("some text")  # type: ignore[arg-type]
        with pytest.raises(UserError, match="example_ids has 1 entries for 2 inputs"):
            cap.run([[1], [2]], example_ids=[0])
    assert cap.rows == 0 and cap.stats.examples == 0
    assert all(t.num_rows == 0 for t in cap.tables().values())


def test_help_is_useful():
    doc = qk_sniffer.attach.__doc__ or ""
    for option in (
        "sampler_params",
        "head_count",
        "full_attention_only",
        "pre_rope",
        "token_strings",
        "max_length",
    ):
        assert option in doc
    for method in (qk_sniffer.Recording.run, qk_sniffer.Recording.tables, qk_sniffer.Recording.write):
        assert method.__doc__ and len(method.__doc__) > 80
    assert "attach" in (qk_sniffer.__doc__ or "")
