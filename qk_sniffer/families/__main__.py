"""``python -m qk_sniffer.families``: the public name of :mod:`qk_sniffer.commands.families`."""

from ..commands.families import main

main()
