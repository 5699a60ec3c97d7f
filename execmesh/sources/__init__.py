"""Local stand-ins for Knative event sources."""
