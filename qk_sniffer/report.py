"""``python -m qk_sniffer.report``: the public name of :mod:`qk_sniffer.commands.report`."""

from .commands.report import main

if __name__ == "__main__":
    main()
