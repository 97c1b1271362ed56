"""``python -m qk_sniffer.verify``: the public name of :mod:`qk_sniffer.commands.verify`."""

from .commands.verify import main

if __name__ == "__main__":
    main()
