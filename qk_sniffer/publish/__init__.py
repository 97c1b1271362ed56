"""Publishing: the dataset's documents and the Hub. Reads the store; never writes part files.

- :mod:`.metadata`   ``qk_sniffer.json``: what the card, later runs and the Hub need to know
- :mod:`.card`       the dataset card (README.md), listing exactly the committed files
- :mod:`.documents`  :func:`~.documents.settle`, the one sequence that changes what a dir shows
- :mod:`.branches`   one branch per (model, dataset): its name, checked against git's rules
- :mod:`.sync`       what the branch holds that this dir lacks (pull) and what is stale
- :mod:`.hub`        preflight and the one-commit push

The command is :mod:`qk_sniffer.commands.publish` (``python -m qk_sniffer.publish`` runs it).
May import: ``qk_sniffer.store``, ``.analysis`` (the figures the card embeds), ``.hub`` (the transport)
and the core; never the capture's model side or tracking.
"""
