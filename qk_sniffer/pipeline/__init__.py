"""The pipeline: a composed config in, a capture dir out, as short named steps.

- :mod:`.validate`  every problem of a config at once, before any weights load
- :mod:`.plan`      the layout, head selection and sampler, without weights
- :mod:`.dry_run`   what a run would do and hold, written nowhere; :mod:`.dry_run_output` the plan as text,
  :mod:`.dry_run_cache` plans of local inputs remembered (shown again without importing torch)
- :mod:`.helpers`   the run's helper processes (W&B, figures), started before torch loads
- :mod:`.budget`    the memory budget: each batch's chunk sizes, the refusal of a plan that cannot fit
- :mod:`.runner`    prepare -> load -> register -> capture -> settle -> push
- :mod:`.signals`   SIGINT/SIGTERM: finish the batch, commit, exit 128+N
- :mod:`.recorded`  writing a notebook Recording into a capture dir, as a run would
- :mod:`.overhead_bench`, :mod:`.long_bench`  the benchmarks (``python -m qk_sniffer.bench``);
  :mod:`.memory_table` the memory table of docs/performance.md
- :mod:`.weights`   a local checkpoint's identity: the digest of its files
- :mod:`.shapes_cache` a model config's weightless attention shapes, measured once and remembered
- :mod:`.user_cache` where the caches live (``$QK_SNIFFER_CACHE``; ``off`` turns them off)
- :mod:`.sweep`     where each job of a multirun writes when output.dir names one dir
- :mod:`.embedded`  the default model and tokenizer as Python objects (``qk_sniffer.embedded_model()``)
- :mod:`.first_minute` what a newcomer waits for, timed (``qk_sniffer.bench bench.mode=first_minute``)
- :mod:`.peer_capture` the bare hook script a capture is timed against there (run by path), and
  :mod:`.peer_nnsight` the same rows through nnsight (where nnsight is installed)

May import: publish, analysis, tracking, the capture, the store, inputs and the core; never the commands.
"""
