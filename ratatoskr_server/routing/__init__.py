"""Orchestration over providers: which one answers a model name. No provider specifics here."""
