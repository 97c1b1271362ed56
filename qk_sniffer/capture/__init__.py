"""The capture: from a loaded model to Arrow tables of sampled query/key rows. Knows no files.

Owns everything about the model side: reading a family's layout (:mod:`.models`, :mod:`.support`,
:mod:`.positions`, ALiBi slopes in :mod:`.alibi`) and measuring its heads per layer from the attention calls
(:mod:`.shapes`), the attention-registry tap (:mod:`.tap`, pre-RoPE vectors rebuilt from the rotary calls in
:mod:`.pre_rope`, calls named by the decoder layer running them,
:mod:`.decoder_layers`; every private transformers attribute in :mod:`.compat`) and the taps at the own
seams of attention written outside the registry (:mod:`.module_tap`), which positions and heads are kept
(:mod:`.samplers`, :mod:`.heads`), the capture session and its pipelined loop (:mod:`.session`, rows in
:mod:`.rows`), the host-side gathering into Arrow tables (:mod:`.gather`) and the self-check against eager
(:mod:`.selfcheck`) and against the model's own attention probabilities (:mod:`.logits`). Long context:
token-wise work in slices (:mod:`.chunking`), masks built per chunk of query rows (:mod:`.long_attention`)
and the memory model that sizes both (:mod:`.memory`).

Lifetimes: a :class:`~.session.CaptureSession` patches transformers while its ``with`` block is open and
restores everything when it closes; nothing is captured outside one.

May import: ``qk_sniffer.inputs`` (batches) and the core; never the store, publishing, the Hub, analysis or
tracking (``make lint`` checks it).
"""
