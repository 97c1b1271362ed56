"""The pipeline: a composed config in, a capture dir out, as short named steps.

- :mod:`.validate`  every problem of a config at once, before any weights load
- :mod:`.plan`      the layout, head selection and sampler, without weights
- :mod:`.dry_run`   what a run would do and hold, written nowhere
- :mod:`.budget`    the memory budget: each batch's chunk sizes, the refusal of a plan that cannot fit
- :mod:`.runner`    prepare -> load -> register -> capture -> settle -> push
- :mod:`.signals`   SIGINT/SIGTERM: finish the batch, commit, exit 128+N
- :mod:`.recorded`  writing a notebook Recording into a capture dir, as a run would
- :mod:`.overhead_bench`, :mod:`.long_bench`  the benchmarks (``python -m qk_sniffer.bench``);
  :mod:`.memory_table` the memory table of docs/performance.md
- :mod:`.weights`   a local checkpoint's identity: the digest of its files
- :mod:`.sweep`     where each job of a multirun writes when output.dir names one dir
- :mod:`.embedded`  the default model and tokenizer as Python objects (``qk_sniffer.embedded_model()``)
- :mod:`.first_minute` what a newcomer waits for, timed (``qk_sniffer.bench bench.mode=first_minute``)
- :mod:`.peer_capture` the bare hook script a capture is timed against there (run by path)

May import: publish, analysis, tracking, the capture, the store, inputs and the core; never the commands.
"""
