"""The package version (one place; the package root and provenance attrs read it)."""

__version__ = "0.1.0"
