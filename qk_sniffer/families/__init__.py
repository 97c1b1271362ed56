"""The support matrix of every decoder family transformers ships.

- :mod:`.sweep`  builds a tiny random model per family and measures its capture against eager
- :mod:`.docs`   renders ``docs/families.md`` and the README's family table from the matrix

The matrix itself ships as ``qk_sniffer/resources/families.json`` and is read by
:mod:`qk_sniffer.capture.support`. The command is :mod:`qk_sniffer.commands.families`.
May import: the capture and the core.
"""
