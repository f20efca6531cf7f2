"""The package version (one place: __init__ re-exports it, bench reports it)."""
__version__ = "0.1.0"
