"""Unit tests of sender authentication (gateway.auth)."""
