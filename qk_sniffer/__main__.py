"""``python -m qk_sniffer`` / ``sniff-qk``: the capture command, :mod:`qk_sniffer.commands.capture`."""

from .core.errors import quiet_interrupts

quiet_interrupts()  # Ctrl-C while the command's modules load: one line, not an import traceback
from .commands.capture import main  # noqa: E402

if __name__ == "__main__":
    main()
