"""``python -m qk_sniffer.bench``: the public name of :mod:`qk_sniffer.commands.bench`."""

from .commands.bench import main

if __name__ == "__main__":
    main()
