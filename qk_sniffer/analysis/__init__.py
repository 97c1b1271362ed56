"""Reading a capture back and looking at it: ``qk_sniffer.load`` and the report's figures.

- :mod:`.loading`       a config's committed rows as numpy arrays (zero-copy vectors, keep_prob)
- :mod:`.numbers`       the report's statistics, streamed over row groups in bounded memory
- :mod:`.plots`         drawing them (matplotlib, no pyplot)
- :mod:`.figures`       rendering into ``figures/``, and which figures are current for the card
- :mod:`.figure_process` the run's side of its figure helpers: who draws which share
- :mod:`.figure_helper` the figure helper process; :mod:`.draw_partner` the second drawer it forks

May import: ``qk_sniffer.store`` (only what it says the dataset holds), ``.capture.samplers`` (keep
probabilities), ``.hub`` (downloads) and the core; never publishing or tracking.
"""
