"""The bottom layer every package may use: files written atomically (``storage.files``)
and the box's one SQLite opener and migration scheme (``storage.db``).

It imports nothing of the box, so licensing, firmware, engines, the fleet and the TUI all
write files the same way, and every component migrates its tables the same way.
"""
