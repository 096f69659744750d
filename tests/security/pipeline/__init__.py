"""Catalogue items through the full pipeline: relay emulator -> gateway -> recording targets."""
