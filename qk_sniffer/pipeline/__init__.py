"""The pipeline: a composed config in, a capture dir out, as short named steps.

- :mod:`.validate`  every problem of a config at once, before any weights load
- :mod:`.plan`      the layout, head selection and sampler, without weights
- :mod:`.dry_run`   what a run would do and hold, written nowhere
- :mod:`.runner`    prepare -> load -> register -> capture -> settle -> push
- :mod:`.weights`   a local checkpoint's identity: the digest of its files
- :mod:`.sweep`     where each job of a multirun writes when output.dir names one dir

May import: publish, analysis, tracking, the capture, the store, inputs and the core; never the commands.
"""
