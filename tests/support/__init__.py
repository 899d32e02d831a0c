"""Test-only helpers and doubles (never installed with the package)."""
