"""The sbx Python SDK (being written)."""
