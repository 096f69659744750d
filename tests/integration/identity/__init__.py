"""Integration tests of registration, mTLS calls and renewal against the control-plane simulator."""
