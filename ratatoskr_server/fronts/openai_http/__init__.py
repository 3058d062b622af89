"""The OpenAI-compatible HTTP front: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``, served by aiohttp in the daemon's event loop through the same edge and pipeline as gRPC."""
