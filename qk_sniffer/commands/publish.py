"""``python -m qk_sniffer.publish output.dir=... output.hub.repo_id=...``: push a capture already on disk.

No model is loaded: the branch, card and model check come from the dir's own ``qk_sniffer.json``. This is
the command a failed push prints, and the way to publish a capture made with ``output.hub.push=false``.
A Hydra app like the others: the same override syntax, ``--help`` and ``--cfg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ..core.config import CONF_DIR, PublishOutputConfig, register_configs
from ..core.errors import UserError
from ..publish import hub
from .common import command, report_user_errors

register_configs()


def settings(cfg: Any) -> PublishOutputConfig:
    """The composed ``output`` group, checked: a dir and a repo are required."""
    output = OmegaConf.to_object(cfg.output) if OmegaConf.is_config(cfg.output) else cfg.output
    assert isinstance(output, PublishOutputConfig)
    if not output.dir:
        raise UserError("output.dir is required: the capture directory to push")
    if not output.hub.repo_id:
        raise UserError("output.hub.repo_id is required, e.g. output.hub.repo_id=your-name/qk-captures")
    output.hub.push = True
    return output


def parse(overrides: list[str]) -> PublishOutputConfig:
    """The settings the command line ``overrides`` give, composed as the app composes them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return settings(compose(config_name="publish", overrides=overrides))


def publish_dir(output: PublishOutputConfig) -> hub.PushResult:
    out_dir = Path(output.dir or "").expanduser().resolve()
    if not out_dir.is_dir():
        raise UserError(f"output.dir={str(out_dir)!r} does not exist or is not a directory")
    hub.read_capture(out_dir)  # before any network: a wrong dir is the likelier mistake
    hub.preflight(output.hub)
    return hub.push_dir(output.hub, out_dir)


@command("publish")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        output = settings(cfg)
        plan = publish_dir(output)
    print(
        f"qk_sniffer: pushed {output.dir} to {output.hub.repo_id}@{plan.branch}: "
        f"{len(plan.added)} files added or updated, {len(plan.pulled)} pulled from the branch first, "
        f"{len(plan.deleted)} stale files deleted"
    )
