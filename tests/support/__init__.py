"""Helpers shared by tests in more than one folder: import them as ``tests.support.<module>``."""
