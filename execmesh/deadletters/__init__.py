"""Dead letters: what the broker could not deliver, kept, retried by policy, then parked."""
