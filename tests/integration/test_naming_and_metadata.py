"""A preset's names follow model.name, and the metadata records only the dataset keys that apply."""

from __future__ import annotations

import json

from helpers import compose_cfg, save_checkpoint, write_jsonl

from qk_sniffer.pipeline.runner import run
from qk_sniffer.publish.branches import branch_name
from qk_sniffer.store.layout import METADATA
from qk_sniffer.tracking.wandb_run import run_name


def test_model_name_given_alone_renames_the_slug_branch_and_run(tmp_path):
    ckpt = save_checkpoint(tmp_path, "qwen3")
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one two three"}, {"text": "four five"}])
    out = tmp_path / "out"
    cfg = compose_cfg(
        [f"model.name={ckpt}", "dataset=local", f"dataset.data_files={data}", f"output.dir={out}"]
    )
    assert cfg.model.slug is None  # the embedded preset's slug named the embedded model, not this one
    assert branch_name(cfg) == "tiny-qwen3-json"
    meta = json.loads((run(cfg).output_dir / METADATA).read_text())
    assert meta["model"]["slug"] is None and meta["model"]["name"] == str(ckpt)
    assert run_name(cfg, meta) == "tiny-qwen3-log_bucket-json"
    # A json dataset: the synthetic generator's keys would describe nothing.
    assert not {"seq_len", "num_examples", "seed"} & set(meta["dataset"])
    assert meta["dataset"]["data_files"] == str(data)


def test_explicit_slug_and_untouched_presets_keep_theirs():
    assert compose_cfg(["model.name=/data/ckpt", "model.slug=mine"]).model.slug == "mine"
    assert compose_cfg([]).model.slug == "embedded-qwen3-tiny"
    # The embedded shape built as another architecture is named by it (a Llama is not published as Qwen3).
    assert compose_cfg(["model.architecture.model_type=llama"]).model.slug == "embedded-llama-tiny"
    assert compose_cfg(["model=qwen3-8b"]).model.slug == "qwen3-8b"
    assert compose_cfg(["model=qwen3-8b", "model.name=/data/qwen3-8b-finetuned"]).model.slug is None
    smol = "+experiment=attention-plasticity/smollm3-checkpoints/stage2-step-4200000"
    assert compose_cfg([smol]).model.slug == "smollm3-3b-stage2-step-4200000"
    assert compose_cfg([smol, "model.name=/data/smol"]).model.slug is None


def test_synthetic_metadata_keeps_its_generator_keys(tmp_path):
    cfg = compose_cfg(
        ["dataset=synthetic", "dataset.seq_len=12", "dataset.num_examples=2", f"output.dir={tmp_path / 'o'}"]
    )
    meta = json.loads((run(cfg).output_dir / METADATA).read_text())
    assert meta["dataset"]["seq_len"] == 12 and meta["dataset"]["num_examples"] == 2


def test_the_capture_point_has_one_name_in_the_api_the_metadata_and_the_card(tmp_path):
    from helpers import embedded_tokenizer, tiny_model

    import qk_sniffer

    for pre_rope, point in ((True, "pre_rope"), (False, "post_rope")):
        out = tmp_path / point
        run(
            compose_cfg(
                [f"output.dir={out}", "capture.layers=[0]", f"capture.pre_rope={str(pre_rope).lower()}"]
            )
        )
        assert json.loads((out / METADATA).read_text())["capture_point"] == point
        assert f"at capture point `{point}`" in (out / "README.md").read_text()
        with qk_sniffer.attach(
            tiny_model("qwen3", vocab_size=512), embedded_tokenizer(), pre_rope=pre_rope
        ) as cap:
            assert cap.capture_point == point
