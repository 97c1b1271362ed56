"""Rebuild qk_sniffer/resources/tokenizer.json: a 512-token byte-level BPE trained on the embedded corpus.

Run from the repository root: ``python tools/build_tokenizer.py``. The result is committed so that the
embedded default needs nothing from the network.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

RESOURCES = Path(__file__).resolve().parent.parent / "qk_sniffer" / "resources"


def main() -> None:
    texts = [json.loads(line)["text"] for line in (RESOURCES / "corpus.jsonl").read_text().splitlines()]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(RESOURCES / "tokenizer.json"))


if __name__ == "__main__":
    main()
