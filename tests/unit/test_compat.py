"""transformers' private surface the tap relies on is all still there (``make test-compat`` runs this on
each supported release): a release that moves one fails here, naming the attribute."""

from __future__ import annotations

import torch
from helpers import tiny_model
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

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
    registered = set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping)
    assert "qk_test" not in registered
    assert compat.eager_attention(module) is mod.eager_attention_forward
    assert compat.routes_attention(type(model)) and isinstance(module, torch.nn.Module)


def test_a_mask_one_key_too_long_is_cut_to_the_keys_as_eager_cuts_it():
    """transformers 5.0/5.1's own mask builders (Mllama, Persimmon, ...) hand sdpa one key too many."""
    key, value = torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4)
    long_mask = torch.arange(6.0).expand(1, 1, 5, 6)
    args, kwargs = compat.mask_fitted_to_keys(key, (value, long_mask), {"scaling": 0.5})
    assert args[0] is value and torch.equal(args[1], long_mask[..., :5]) and kwargs == {"scaling": 0.5}
    _, kwargs = compat.mask_fitted_to_keys(key, (value,), {"attention_mask": long_mask})
    assert torch.equal(kwargs["attention_mask"], long_mask[..., :5])
    fitting, padding = long_mask[..., :5], torch.ones(1, 5)
    assert compat.mask_fitted_to_keys(key, (value, fitting), {})[0][1] is fitting
    assert compat.mask_fitted_to_keys(key, (value, padding), {})[0][1] is padding  # flash's 2D padding mask
    assert compat.mask_fitted_to_keys(key, (value, None), {})[0][1] is None
