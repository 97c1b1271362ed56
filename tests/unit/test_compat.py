"""transformers' private surface the tap relies on is all still there (``make test-compat`` runs this on
each supported release): a release that moves one fails here, naming the attribute."""

from __future__ import annotations

import torch
from helpers import tiny_model
from transformers import AttentionInterface

from qk_sniffer.capture import compat


def test_every_private_attribute_the_tap_uses_exists():
    assert compat.missing_surface() == []


def test_attention_implementation_and_module_globals_are_restored():
    model = tiny_model("llama")
    module = model.model.layers[0].self_attn
    before = model.config._attn_implementation
    mod = compat.modeling_module(module)
    rotary = [(m, n) for m, n in compat.rotary_functions([module])]
    assert (mod, "apply_rotary_pos_emb") in rotary
    original = mod.apply_rotary_pos_emb
    AttentionInterface.register("qk_test", AttentionInterface._global_mapping["sdpa"])
    try:
        with (
            compat.attention_implementation([model.config], "qk_test"),
            compat.module_globals([(mod, "apply_rotary_pos_emb", lambda f: f)]),
        ):
            assert model.config._attn_implementation == "qk_test"
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    finally:
        compat.unregister_attention("qk_test")
    assert model.config._attn_implementation == before
    assert mod.apply_rotary_pos_emb is original
    assert "qk_test" not in compat.registered_attention_names()
    assert compat.eager_attention(module) is mod.eager_attention_forward
    assert compat.routes_attention(type(model)) and isinstance(module, torch.nn.Module)
