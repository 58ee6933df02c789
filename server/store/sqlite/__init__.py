"""The SQLite backend: predictions, keys and webhook deliveries in one database file (WAL)."""
