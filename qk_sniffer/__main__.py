"""``python -m qk_sniffer`` / ``sniff-qk``: the capture command, :mod:`qk_sniffer.commands.capture`."""

from .core.errors import quiet_interrupts

quiet_interrupts()  # Ctrl-C while the command's modules load: one line, not an import traceback
from .commands.capture import main  # noqa: E402
from .commands.common import run_and_exit  # noqa: E402


def cli() -> None:
    """The command as its own process (``python -m qk_sniffer``, ``sniff-qk``); ``main`` is the same
    command for a caller that goes on afterwards (a notebook, the tests)."""
    run_and_exit(main)


if __name__ == "__main__":
    cli()
