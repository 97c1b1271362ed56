"""Watching a run: a terminal progress bar, an optional Weights & Biases run, and the end summary.

- :mod:`.tracker`    the one object the runner calls (``batch`` after each batch, ``summary``, ``finish``)
- :mod:`.progress`   the tqdm bar over examples and tokens, quiet off a terminal
- :mod:`.wandb_run`  W&B mode, run name, config without secrets, and the sink that never ends a capture
- :mod:`.wandb_process` the W&B run's own helper process, which the sink feeds
- :mod:`.summary`    the text printed when a run ends: rows per config, the card, the figures, what next

The statistics it logs are computed in :mod:`qk_sniffer.capture.stats`. ``wandb`` and ``torch`` are imported
only when a run uses them: validating a config (``choose_mode``) stays light.

May import: the capture (its row blocks and statistics), inputs (batches) and the core; never the store,
publishing, the Hub or analysis (``make lint`` checks it).
"""
