"""``python -m qk_sniffer.compact``: the public name of :mod:`qk_sniffer.commands.compact`."""

from .commands.compact import main

if __name__ == "__main__":
    main()
