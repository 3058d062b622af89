"""The one place that builds HTTP clients: timeouts, connection pools, HTTP/2."""
