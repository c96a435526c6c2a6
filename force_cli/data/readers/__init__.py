"""One module per file format: each turns the files of one dataset family into ``Parts``.

Every reader says its folder layout, and raises a one-line ``DataError`` naming the file and the
fix for anything missing or unreadable. Nothing is ever unpickled.
"""
