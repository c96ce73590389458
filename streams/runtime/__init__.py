"""The imperative shell around the core: configuration, secrets, Kafka, state, metrics."""
