"""Security tests: the adversarial cases of docs/security-test-catalogue.md."""
