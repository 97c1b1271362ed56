"""``python -m qk_sniffer`` / ``sniff-qk``: the capture command, :mod:`qk_sniffer.commands.capture`."""

from .commands.capture import main

if __name__ == "__main__":
    main()
