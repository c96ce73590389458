"""Kafka I/O: batches and headers, topic creation, Avro input and the Schema Registry."""
