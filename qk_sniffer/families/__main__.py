"""``python -m qk_sniffer.families``: see :mod:`qk_sniffer.families.cli`."""

from .cli import main

main()
