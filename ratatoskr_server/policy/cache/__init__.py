"""The response cache: exact-match keys (``key``), value encodings (``codec``) and the stage (``stage``)."""
