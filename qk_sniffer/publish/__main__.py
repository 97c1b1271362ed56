"""``python -m qk_sniffer.publish``: the public name of :mod:`qk_sniffer.commands.publish`."""

from ..commands.publish import main

main()
