"""The trusted model store: the only way model files reach ONNX Runtime and the tokenizer.

A model folder is flat: ``manifest.json`` (how to serve it), the graph, the tokenizer, and the
store's own files beside them:

- ``content.json`` — every other file's size and BLAKE3 digest, and the folder's content address
  ``blake3:<hex>`` over that list (``content.py``). Written by ``ratatoskr models import`` and
  ``ratatoskr models hash``; never by the daemon, which treats model folders as read-only.
- ``model.sig`` — an OpenSSF Model Signing bundle (``signature.py``), where the ``model_signing``
  CLI puts it when told ``--signature MODEL/model.sig``; it covers ``content.json`` too.

Encrypted graphs and tokenizers (``crypt.py``, ``sealing.py``) are decrypted in memory with the
key from ``store.key_file`` or ``store.passphrase`` (per model: ``models.NAME.*``): ONNX Runtime
builds the session from bytes and the tokenizer from a string, so no plaintext reaches the disk.
``content.json`` and ``model.sig`` cover the encrypted bytes as stored.

At load the store streams every covered file through BLAKE3 in the loader executor before any
byte is parsed. A folder without ``content.json`` is hashed the same way and reported
"unverified" (its address is still exact, so cache keys stay right), unless
``store.require_manifest`` refuses it. ``store.verify = false`` skips hashing altogether (the
revision then falls back to file sizes and times).
"""
