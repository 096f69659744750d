"""Unit tests of the relay listener parts that need no sockets."""
