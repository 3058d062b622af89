"""Terminal views drawn with rich (``ratatoskr status --watch``, ``ratatoskr tree``, progress bars).

Imported only by the CLI commands that draw them, never by the daemon: rich costs tens of
milliseconds to import, and ``ratatoskr serve`` should not pay that.
"""
