"""The event store behind replay, and replay sessions."""
