"""The pipeline: a composed config in, a capture dir out, as short named steps.

- :mod:`.validate`  every problem of a config at once, before any weights load
- :mod:`.plan`      the layout, head selection and sampler, without weights
- :mod:`.dry_run`   what a run would do and hold, written nowhere
- :mod:`.runner`    prepare -> load -> register -> capture -> settle -> push
- :mod:`.embedded`  the default model and tokenizer as Python objects (``qk_sniffer.embedded_model()``)

May import: publish, analysis, tracking, the capture, the store, inputs and the core; never the commands.
"""
