"""The peer the first-minute bench measures a capture against: the smallest honest script that writes what
``sampler=all capture.pre_rope=true`` writes for one document (every position's query and key vectors
before RoPE, one Parquet file per (layer, head, q|k)), with forward hooks on the projections of a tiny
random Llama. No sampling, no store, no resume, no card, no figures, no W&B: the floor for the same rows.

It is run by path (``python peer_capture.py OUT SEQ_LEN``), so it imports torch, transformers and pyarrow
only, as a user's own script would; :mod:`.first_minute` times it in a fresh interpreter.
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoConfig, AutoModelForCausalLM

# The shape of the embedded default with model.architecture.model_type=llama (conf/model/embedded.yaml).
SHAPE = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
}


def capture(out: Path, seq_len: int) -> int:
    """Write the rows; returns how many."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SHAPE)).eval()
    ids = torch.randint(0, SHAPE["vocab_size"], (1, seq_len))
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    for index, layer in enumerate(model.model.layers):
        for kind, projection in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj)):
            projection.register_forward_hook(
                lambda _m, _a, y, key=(index, kind): outputs.__setitem__(key, y[0])
            )
    with torch.no_grad():
        model.model(ids)
    positions = pa.array(np.arange(seq_len, dtype=np.int32))
    example = pa.array(np.zeros(seq_len, dtype=np.int64))
    rows = 0
    for (index, kind), projected in outputs.items():
        heads = projected.reshape(seq_len, -1, SHAPE["head_dim"])
        for head in range(heads.shape[1]):
            flat = pa.array(heads[:, head].contiguous().numpy().reshape(-1))
            vectors = pa.FixedSizeListArray.from_arrays(flat, SHAPE["head_dim"])
            folder = out / f"l{index:02d}h{head:02d}{kind}"
            folder.mkdir(parents=True)
            pq.write_table(
                pa.table({"example_id": example, "position": positions, "vector": vectors}),
                folder / "0.parquet",
            )
            rows += seq_len
    return rows


if __name__ == "__main__":
    print(capture(Path(sys.argv[1]), int(sys.argv[2])))
