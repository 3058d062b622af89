"""Adapters, one per upstream wire protocol, behind one interface. They know wire formats, no policy."""
