"""The capture: from a loaded model to Arrow tables of sampled query/key rows. Knows no files.

Owns everything about the model side: reading a family's layout (:mod:`.models`, :mod:`.support`,
:mod:`.positions`) and measuring its heads per layer from the attention calls (:mod:`.shapes`), the one
attention-registry tap (:mod:`.tap`, calls named by the decoder layer running them,
:mod:`.decoder_layers`; every private transformers attribute in :mod:`.compat`), which positions and heads
are kept (:mod:`.samplers`, :mod:`.heads`), the capture
session and its pipelined loop (:mod:`.session`, rows in :mod:`.rows`), the host-side gathering into Arrow
tables (:mod:`.gather`) and the self-check against eager (:mod:`.selfcheck`).

Lifetimes: a :class:`~.session.CaptureSession` patches transformers while its ``with`` block is open and
restores everything when it closes; nothing is captured outside one.

May import: ``qk_sniffer.inputs`` (batches) and the core; never the store, publishing, the Hub, analysis or
tracking (``make lint`` checks it).
"""
