"""A family on a transformers release its support matrix was not measured on: a short exactness probe.

The matrix a run reads may come from an older release than the installed one (:mod:`.matrices`). A family
that matrix lists as exact is then built once more, tiny, from the ``tiny_config`` the sweep measured
(random weights, nothing downloaded), with the backend the run will use, and captured pre- and post-RoPE on
one right-padded batch of unequal lengths, every vector compared with the model's own eager computation
(:func:`~.selfcheck.check_against_eager`, what the sweep runs). This happens before the real weights load;
a mismatch is one UserError naming the first differing vector. A pass is remembered for the process, so
each (family, backend, device) is probed once.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from ..core.config import ModelConfig
from ..core.errors import UserError
from .backend_facts import check_loaded
from .matrices import matrix_choice
from .models import (
    _auto_class,
    attention_backend,
    choose_attn_implementation,
    layout_from_config,
    resolve_device,
    text_config,
)
from .selfcheck import HALF_TOLERANCE, PROBE_LENGTHS, TOLERANCE, check_against_eager
from .support import matrix_entry

log = logging.getLogger(__name__)

# (model_type, backend, device type) probes that passed in this process.
_passed: set[tuple[str, str | None, str]] = set()
PROBE_VOCAB = 512  # the sweep's tiny vocabulary: every probe id fits any tiny model


def check_before_loading(model_cfg: ModelConfig, config: PretrainedConfig) -> None:
    """For a run: probe the family with the backend :func:`~.models.load_model` will choose, before it
    loads any weight (nothing happens on a release the matrix was measured on)."""
    device = resolve_device(model_cfg.device)
    backend = choose_attn_implementation(model_cfg.attn_implementation, config, device)
    check_release(config, backend, device)


def check_loaded_model(model: PreTrainedModel) -> None:
    """For a model loaded elsewhere (the Python API): its backend must be right for its family on this
    release (:mod:`.backend_facts`), and the family must pass the probe where the release was not measured."""
    backend = attention_backend(model)
    check_loaded(model.config.model_type, backend)
    check_release(model.config, backend, next(model.parameters()).device)


def how_checked(model_type: str) -> dict[str, str]:
    """What the metadata records: the matrix read, and how the family was found exact on this release
    (``matrix``: measured on it; ``probe``: probed before loading; ``self-check``: a family no matrix lists,
    checked against its own eager attention after loading)."""
    choice = matrix_choice()
    entry = matrix_entry(model_type)
    check = "self-check" if entry is None else "matrix" if choice.measured_here else "probe"
    return {"measured_on": choice.measured_on, "installed": choice.installed, "check": check}


def check_release(config: PretrainedConfig, backend: str | None, device: torch.device) -> None:
    """Refuse a family the matrix of another release calls exact unless it captures exactly on this one."""
    choice = matrix_choice()
    model_type = config.model_type
    entry = matrix_entry(model_type)
    # A measured release needs no probe; an unlisted family is self-checked after loading; one the matrix
    # does not call exact was refused before (check_family); remote code is its own.
    if (
        choice.measured_here
        or entry is None
        or entry["status"] != "exact"
        or getattr(config, "auto_map", None)
    ):
        return
    key = (model_type, backend, device.type)
    if key in _passed:
        return
    problem = probe(model_type, entry["tiny_config"], backend, device)
    if problem is not None:
        raise UserError(
            f"model family {model_type!r} was measured exact on transformers {choice.measured_on}, not on "
            f"the installed {choice.installed}, and its exactness probe on {choice.installed} (a tiny model "
            f"of the family, {backend or 'default'} backend, against its own eager attention) failed: "
            f"{problem}; install transformers {choice.measured_on}, or measure {choice.installed} with "
            "`make sweep`"
        )
    _passed.add(key)
    log.info(
        "transformers %s was not measured (nearest matrix: %s): %s passed its exactness probe (%s)",
        choice.installed,
        choice.measured_on,
        model_type,
        backend,
    )


def probe(model_type: str, tiny: dict[str, object], backend: str | None, device: torch.device) -> str | None:
    """The first problem of a tiny ``model_type`` model captured with ``backend`` on ``device``, else None."""
    half = backend is not None and backend.startswith("flash")  # flash attention runs in half precision
    try:
        config = AutoConfig.for_model(model_type, **tiny)
        torch.manual_seed(0)
        with torch.device(device):
            model = _auto_class(config, False).from_config(
                config, dtype=torch.bfloat16 if half else torch.float32, attn_implementation=backend
            )
        model.eval()
    except Exception as exc:  # a config or model this release cannot build is a failed probe, said so
        return f"its tiny model could not be built ({type(exc).__name__}: {exc})"
    vocab = min(int(text_config(config).vocab_size), PROBE_VOCAB)
    rng = np.random.default_rng(0)
    texts = [rng.integers(3, vocab, size=n).tolist() for n in PROBE_LENGTHS]
    try:
        with torch.inference_mode():
            result = check_against_eager(
                model,
                texts,
                layout_from_config(config, check=False),
                tol=HALF_TOLERANCE if half else TOLERANCE,
                relative=half,
            )
    except Exception as exc:  # the capture itself failing is the probe's finding, not a crash of the run
        return f"{type(exc).__name__}: {exc}"
    if not result.exact:
        return result.problems[0] if result.problems else "no vector was captured"
    return None
