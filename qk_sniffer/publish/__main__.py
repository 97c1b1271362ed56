"""``python -m qk_sniffer.publish``: see :mod:`qk_sniffer.publish.cli`."""

from .cli import main

main()
