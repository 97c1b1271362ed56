"""The inputs: dataset rows in, tokenized examples and batches out.

- :mod:`.sources`       a dataset's rows (the embedded corpus, local files, the Hub), checked up front
- :mod:`.data`          rows to examples (ids, token-id hashes, shards, truncation) and padded batches
- :mod:`.tokenization`  the tokenizer (the model's own or a named one), token strings, the pad id
- :mod:`.given`         inputs handed over in Python (the notebook API), checked before any capture

May import: the core only.
"""
