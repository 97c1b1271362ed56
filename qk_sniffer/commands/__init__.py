"""The commands: one thin Hydra app per command, found by its name. Each parses, calls one floor down,
prints; none holds logic of its own, and nothing in the package imports them.

- :mod:`.capture`     ``python -m qk_sniffer`` (``sniff-qk``): a capture run, or its plan (``dry_run=true``)
- :mod:`.verify`      ``python -m qk_sniffer.verify``: check (and repair) a capture dir
- :mod:`.compact`     ``python -m qk_sniffer.compact``: merge each config's parts
- :mod:`.report`      ``python -m qk_sniffer.report``: the figures and numbers of a capture dir
- :mod:`.publish`     ``python -m qk_sniffer.publish``: push a capture dir to the Hub
- :mod:`.families`    ``python -m qk_sniffer.families``: the support matrix (and the sweep that measures it)
- :mod:`.bench`       ``python -m qk_sniffer.bench``: capture overhead and speed
- :mod:`.load_bench`  ``python -m qk_sniffer.load_bench``: reading a capture back
- :mod:`.common`      how every command shows a user error, and opens the dir it works on

The public ``python -m qk_sniffer.NAME`` modules are two-line shims that call these.
May import: everything below (pipeline, publish, analysis, the store, the core).
"""
