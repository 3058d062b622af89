"""Shared mutable state behind protocols: in memory by default, Redis when replicas share it."""
