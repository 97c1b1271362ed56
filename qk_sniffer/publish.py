"""``python -m qk_sniffer.publish output.dir=... output.hub.repo_id=...``: push a capture already on disk.

No model is loaded: the branch, card and model check come from the dir's own ``qk_sniffer.json``. This is
the command a failed push prints, and the way to publish a capture made with ``output.hub.push=false``.
Arguments use Hydra's override syntax, checked against the typed ``output`` schema.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import hub
from .cli import report_user_errors
from .config import OutputConfig
from .errors import UserError

USAGE = """usage: python -m qk_sniffer.publish output.dir=DIR output.hub.repo_id=OWNER/NAME
                                [output.hub.branch=BRANCH] [output.hub.private=true]

Push the capture in DIR to the dataset repo's branch (default: <model>-<dataset> from the capture), as one
commit. The token comes from HF_TOKEN, a .env file, or `hf auth login`."""


def parse(argv: list[str]) -> OutputConfig:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(argv)
    except HydraException as exc:
        raise UserError(f"cannot read the arguments: {exc}") from None
    output = OmegaConf.structured(OutputConfig)
    for override in overrides:
        key = override.key_or_group
        if not key.startswith("output.") or override.is_delete():
            raise UserError(f"{override.input_line!r}: expected output.KEY=VALUE, e.g. output.dir=captures/x")
        if override.is_sweep_override():
            raise UserError(
                f"{override.input_line!r}: one value per key (quote a value holding commas: 'a,b')"
            )
        try:
            OmegaConf.update(output, key.removeprefix("output."), override.value(), merge=True)
        except OmegaConfBaseException as exc:
            raise UserError(f"{key}: {str(exc).splitlines()[0]}") from None
    parsed = OmegaConf.to_object(output)
    assert isinstance(parsed, OutputConfig)
    if not parsed.dir:
        raise UserError("output.dir is required: the capture directory to push")
    if not parsed.hub.repo_id:
        raise UserError("output.hub.repo_id is required, e.g. output.hub.repo_id=your-name/qk-captures")
    parsed.hub.push = True
    return parsed


def publish_dir(output: OutputConfig) -> hub.PushPlan:
    out_dir = Path(output.dir or "").expanduser().resolve()
    if not out_dir.is_dir():
        raise UserError(f"output.dir={str(out_dir)!r} does not exist or is not a directory")
    hub.read_capture(out_dir)  # before any network: a wrong dir is the likelier mistake
    hub.preflight(output.hub)
    return hub.push_dir(output.hub, out_dir)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    with report_user_errors():
        output = parse(args)
        plan = publish_dir(output)
        print(
            f"qk_sniffer: pushed {output.dir} to {output.hub.repo_id}@{plan.branch}: "
            f"{len(plan.added)} files added or updated, {len(plan.pulled)} pulled from the branch first, "
            f"{len(plan.deleted)} stale files deleted"
        )


if __name__ == "__main__":
    main()
