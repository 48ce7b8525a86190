"""Faults injected at the client layer, for the reliability tests: the real components run,
with one client wrapped so that it fails the way a broker or a store fails."""
