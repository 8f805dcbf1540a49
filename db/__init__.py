"""Ground layer: the SQLite store. Import ``Store`` from ``prefloop.db.store``."""
