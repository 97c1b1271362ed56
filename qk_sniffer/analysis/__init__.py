"""Reading a capture back and looking at it: ``qk_sniffer.load`` and the report's figures.

- :mod:`.loading`       a config's committed rows as numpy arrays (zero-copy vectors, keep_prob)
- :mod:`.hub_download`  the same from a Hub branch: only that config's committed files
- :mod:`.numbers`       the report's statistics, streamed over row groups in bounded memory
- :mod:`.plots`         drawing them (matplotlib, no pyplot)
- :mod:`.figures`       rendering into ``figures/``, and which figures are current for the card

May import: ``qk_sniffer.store`` (only what it says the dataset holds), ``.capture.samplers`` (keep
probabilities), ``.hub_client`` and the base modules; never publishing or tracking.
"""
