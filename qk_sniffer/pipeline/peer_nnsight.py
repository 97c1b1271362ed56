"""The first-minute bench's second peer: the same rows as :mod:`.peer_capture`, taken the way many
researchers take them, with an nnsight trace of the projections' outputs (the short script the issue that
set the 1.1x target measured against). Run by path with an interpreter that has nnsight
(``bench.nnsight_python``); nnsight is no dependency of qk_sniffer, and without it this peer is skipped.
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from nnsight import NNsight
from peer_capture import SHAPE  # the script's own folder is on the path: run by path
from transformers import AutoConfig, AutoModelForCausalLM


def capture(out: Path, seq_len: int) -> int:
    """Write the rows; returns how many."""
    torch.manual_seed(0)
    model = NNsight(AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SHAPE)).eval())
    ids = torch.randint(0, SHAPE["vocab_size"], (1, seq_len))
    saved = {}
    with torch.no_grad(), model.trace(ids):
        for index, layer in enumerate(model.model.layers):
            saved[index, "q"] = layer.self_attn.q_proj.output.save()
            saved[index, "k"] = layer.self_attn.k_proj.output.save()
    positions = pa.array(np.arange(seq_len, dtype=np.int32))
    example = pa.array(np.zeros(seq_len, dtype=np.int64))
    rows = 0
    for (index, kind), projected in saved.items():
        heads = projected[0].reshape(seq_len, -1, SHAPE["head_dim"])
        for head in range(heads.shape[1]):
            flat = pa.array(heads[:, head].contiguous().numpy().reshape(-1))
            vectors = pa.FixedSizeListArray.from_arrays(flat, SHAPE["head_dim"])
            folder = out / f"l{index:02d}h{head:02d}{kind}"
            folder.mkdir(parents=True)
            table = pa.table({"example_id": example, "position": positions, "vector": vectors})
            pq.write_table(table, folder / "0.parquet")
            rows += seq_len
    return rows


if __name__ == "__main__":
    print(capture(Path(sys.argv[1]), int(sys.argv[2])))
