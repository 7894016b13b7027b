"""Schema migrations of the server-database backends (SQLite versions itself in sqlite.py)."""
