"""Auditors' tools: read the blocked topic, verify decisions (P7), what-if, republish, reports."""
