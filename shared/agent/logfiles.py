"""The agent's log files: a rotating file (GUESTSYNC_LOG_FILE) besides stderr, in the format of stderr."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

#: 10 MB per file, 5 old files kept: about 60 MB at most per agent.
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


def add_log_file(path: str | None) -> logging.Handler | None:
    """Send the root logger's records to a rotating file too (same formatter as the first handler)."""
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    root = logging.getLogger()
    existing = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(existing or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler
