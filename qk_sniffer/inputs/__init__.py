"""The inputs: dataset rows in, tokenized examples and batches out.

- :mod:`.data`          texts from the embedded corpus, local files or the Hub; examples, batches, shards
- :mod:`.tokenization`  the tokenizer (the model's own or a named one), token strings, the pad id
- :mod:`.given`         inputs handed over in Python (the notebook API), checked before any capture

May import: the core only.
"""
