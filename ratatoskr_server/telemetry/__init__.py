"""Metrics, structured logs and (later) traces, injected into the edge rather than imported everywhere."""
