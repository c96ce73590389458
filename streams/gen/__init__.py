"""Synthetic traffic and consent-string encoders for the demo, tests and benchmarks."""
