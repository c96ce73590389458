"""Operator tools like kcat's: `produce` and `tail`, with the guard's own Kafka settings."""
