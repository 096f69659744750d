"""Integration tests of the relay listener and the outbound proxy connector."""
