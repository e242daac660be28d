"""The built-in synthetic dataset and the checks on a user's dataset."""
