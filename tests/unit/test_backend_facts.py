"""The per-release table of backends a family declares but runs wrong, and every place that consults it.

The releases are passed in (or the installed one is replaced), so each rule is checked on every release
whatever transformers is installed; ``make test-compat`` also runs the real thing on old releases
(tests/integration/test_architectures.py: Gemma 2 with its softcap, backend left to the project).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from qk_sniffer.capture import backend_facts
from qk_sniffer.capture.backend_facts import BackendFact, facts_in_force, refusal, wrong_backends
from qk_sniffer.capture.models import choose_attn_implementation
from qk_sniffer.core.errors import UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("model_type", "release", "wrong"),
    [
        ("gemma2", "5.0.0", {"sdpa"}),
        ("gemma2", "5.10.4", {"sdpa"}),
        ("gemma2", "5.20.2", {"sdpa"}),  # the last release whose Gemma 2 still declared sdpa
        ("gemma2", "5.21.0", set()),
        ("vaultgemma", "5.17.0", {"sdpa"}),
        ("doge", "5.17.0", {"sdpa"}),
        ("doge", "5.18.0", set()),
        ("mllama", "5.22.0", {"flash_attention_2", "flash_attention_3"}),
        ("mllama", "5.23.0", set()),
        ("gemma3", "5.23.0", {"flash_attention_2", "flash_attention_3"}),
        ("gemma3", "5.24.0", set()),
        ("gemma3_text", "5.0.0", set()),  # the text-only class never dropped anything under flash
        ("llama", "5.0.0", set()),
        ("gemma2", "5.21.0.dev0", {"sdpa"}),  # a pre-release of the fixing release is not fixed yet
    ],
)
def test_each_family_is_wrong_exactly_on_the_releases_before_the_fix(model_type, release, wrong):
    assert set(wrong_backends(model_type, release)) == wrong


def test_the_refusal_names_the_family_the_release_and_the_backend_to_use():
    error = refusal("gemma2", "sdpa", "model.attn_implementation", "5.10.4")
    assert isinstance(error, UserError)
    assert str(error) == (
        "model.attn_implementation='sdpa': model family 'gemma2' on transformers 5.10.4 declares sdpa "
        "support, but sdpa drops its attention logit softcapping, so every vector after the first layer is "
        "wrong; use model.attn_implementation='eager' (null picks it), or transformers 5.21.0 or later"
    )
    assert refusal("gemma2", "eager", "model.attn_implementation", "5.10.4") is None
    assert refusal("gemma2", "sdpa", "model.attn_implementation", "5.21.0") is None


def test_the_facts_in_force_differ_across_the_fix_and_agree_on_either_side():
    assert facts_in_force("gemma2", "5.0.0") == facts_in_force("gemma2", "5.20.2") != []
    assert facts_in_force("gemma2", "5.21.0") == facts_in_force("gemma2", "5.25.0") == []


@pytest.fixture
def sdpa_wrong_for_llama(monkeypatch):
    """A fact about a family whose class declares sdpa on every release, so the consulting code is measured
    on whatever transformers is installed."""
    fact = BackendFact(("llama",), ("sdpa",), fixed_in="99.0.0", why="a test fact", use="eager")
    monkeypatch.setattr(backend_facts, "FACTS", (*backend_facts.FACTS, fact))


def test_the_default_choice_never_picks_a_wrong_backend(sdpa_wrong_for_llama):
    llama = AutoConfig.for_model("llama")
    assert choose_attn_implementation(None, llama, CPU) == "eager"
    assert choose_attn_implementation(None, AutoConfig.for_model("qwen3"), CPU) == "sdpa"


def test_a_requested_wrong_backend_is_refused_naming_the_release(sdpa_wrong_for_llama, monkeypatch):
    monkeypatch.setattr(backend_facts, "installed_release", lambda: "5.10.4")
    with pytest.raises(UserError) as err:
        choose_attn_implementation("sdpa", AutoConfig.for_model("llama"), CPU)
    assert str(err.value).startswith(
        "model.attn_implementation='sdpa': model family 'llama' on transformers 5.10.4 declares sdpa support"
    )
    assert choose_attn_implementation("eager", AutoConfig.for_model("llama"), CPU) == "eager"


def test_flash_is_not_picked_on_cuda_where_the_release_runs_it_wrong(monkeypatch):
    import qk_sniffer.capture.models as models

    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None
    )
    fact = BackendFact(("llama",), ("flash_attention_2",), fixed_in="99.0.0", why="a test fact", use="sdpa")
    assert choose_attn_implementation(None, AutoConfig.for_model("llama"), CUDA) == "flash_attention_2"
    monkeypatch.setattr(backend_facts, "FACTS", (fact,))
    assert choose_attn_implementation(None, AutoConfig.for_model("llama"), CUDA) == "sdpa"


def test_a_model_loaded_elsewhere_with_a_wrong_backend_is_refused(monkeypatch):
    monkeypatch.setattr(backend_facts, "installed_release", lambda: "5.10.4")
    backend_facts.check_loaded("gemma2", "eager")  # right on every release: nothing raised
    with pytest.raises(UserError) as err:
        backend_facts.check_loaded("gemma2", "sdpa")
    assert str(err.value) == (
        "attn_implementation='sdpa': model family 'gemma2' on transformers 5.10.4 declares sdpa support, but "
        "sdpa drops its attention logit softcapping, so every vector after the first layer is wrong; use "
        "attn_implementation='eager', or transformers 5.21.0 or later"
    )


def test_the_versions_of_a_capture_are_the_installed_distributions():
    import tokenizers
    import transformers

    versions = backend_facts.capture_versions()
    assert versions["transformers"] == transformers.__version__
    assert versions["tokenizers"] == tokenizers.__version__
    assert versions["torch"] == torch.__version__
