"""The Hugging Face Hub as a transport: the client, git ref rules, and downloading a capture's files.

- :mod:`.client`    the token, the API factory (the seam tests replace with a stand-in), error wording
- :mod:`.access`    the token or why there is none, deadlines, write access, a branch's head, downloads
- :mod:`.gitref`    git's branch-name rules
- :mod:`.download`  one config's committed files from a Hub branch

Publishing (the push, the card) lives in :mod:`qk_sniffer.publish`, which uses this.
May import: the store (to read a manifest), the core.
"""
