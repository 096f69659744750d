"""Policy decisions: the Rego input document, policy data, and the engines that decide."""
