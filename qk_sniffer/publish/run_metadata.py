"""What a run records about itself before it captures: the settings, the layout, the selection, and the
releases it runs with (how the family was found exact on them, the backend facts in force). Imports the
capture's release checks (torch, transformers), so it lives apart from :mod:`.metadata`, which the commands
that only read a capture dir use."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from packaging.version import Version

from ..capture.backend_facts import capture_versions, check_resume, facts_in_force
from ..capture.heads import HeadSelection
from ..capture.layout import ModelLayout
from ..capture.points import CapturePoint
from ..capture.probe import how_checked
from ..capture.samplers import Sampler
from ..core.config import Config, plain


def run_metadata(
    cfg: Config,
    layout: ModelLayout,
    selection: HeadSelection,
    sampler: Sampler,
    model_type: str | None = None,
) -> dict[str, Any]:
    """What the card and later runs need to know about this run (no secrets: tokens never reach cfg).

    ``model_type`` is the loaded config's (a vision-language wrapper's own, not its text decoder's, which
    ``layout`` holds): the backend facts are keyed by it.
    """
    model = OmegaConf.to_container(
        OmegaConf.structured(cfg.model) if not OmegaConf.is_config(cfg.model) else cfg.model, resolve=True
    )
    assert isinstance(model, dict)
    model.pop("architecture", None)
    return {
        "model": model,
        "layout": layout.record(),
        "dataset": _dataset_keys(plain(cfg.dataset)),
        "tokenizer": plain(cfg.tokenizer),
        "max_length": cfg.tokenizer.max_length,
        "sampler": {"name": sampler.name, **sampler.params()},
        "capture": plain(cfg.capture),
        "capture_point": CapturePoint.of(cfg.capture.pre_rope).value,
        "selection": {
            "q": {str(k): list(v) for k, v in selection.q_heads.items()},
            "k": {str(k): list(v) for k, v in selection.k_heads.items()},
        },
        **release_metadata(model_type or layout.model_type),
    }


def release_metadata(model_type: str) -> dict[str, Any]:
    """The releases the capture runs with, the support matrix it read and how the family was found exact on
    this release, and the backend facts in force for the family."""
    versions = capture_versions()
    return {
        "versions": versions,
        "support_matrix": how_checked(model_type),
        "backend_facts": {
            "model_type": model_type,
            "in_force": facts_in_force(model_type, versions["transformers"]),
        },
    }


def check_release_of_dir(recorded: dict[str, Any], metadata: dict[str, Any], where: str) -> str | None:
    """Before a run adds rows to a dir: a note when an earlier run used another transformers release (the
    metadata then lists it under ``earlier_transformers``), a UserError when the family's backend facts
    differ between the two (:func:`~qk_sniffer.capture.backend_facts.check_resume`)."""
    written_on = recorded.get("versions", {}).get("transformers")
    running_on = metadata["versions"]["transformers"]
    note = check_resume(metadata["backend_facts"]["model_type"], written_on, running_on, where)
    earlier = set(recorded.get("earlier_transformers", [])) | ({written_on} if written_on else set())
    earlier.discard(running_on)
    if earlier:
        metadata["earlier_transformers"] = sorted(earlier, key=Version)
    return note


# Keys that only the synthetic dataset reads: recorded for another dataset they would describe nothing.
SYNTHETIC_ONLY = ("seq_len", "num_examples", "seed")


def _dataset_keys(dataset: dict[str, Any]) -> dict[str, Any]:
    if dataset.get("path") == "synthetic":
        return dataset
    return {k: v for k, v in dataset.items() if k not in SYNTHETIC_ONLY}
