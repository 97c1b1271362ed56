"""The support matrix of every decoder family transformers ships.

- :mod:`.tiny`   shrinks each family's default config by generic rules (the sweep's tiny configs)
- :mod:`.sweep`  builds a tiny random model per family and measures its capture against eager
- :mod:`.docs`   renders ``docs/families.md`` and the README's family table from the matrix

The matrix itself ships as ``qk_sniffer/resources/families.json`` (the newest release measured) and
``qk_sniffer/resources/families/<release>.json`` (older ones); :mod:`qk_sniffer.capture.matrices` picks the
installed release's and :mod:`qk_sniffer.capture.support` reads it. The command is
:mod:`qk_sniffer.commands.families`. May import: the capture and the core.
"""
