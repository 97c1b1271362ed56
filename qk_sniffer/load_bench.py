"""``python -m qk_sniffer.load_bench``: the public name of :mod:`qk_sniffer.commands.load_bench`."""

from .commands.load_bench import main

if __name__ == "__main__":
    main()
