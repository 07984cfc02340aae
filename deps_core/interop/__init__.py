"""Conversions to and from other once-for-all code bases."""
