"""The pure decision core: no Kafka, no clock, no globals.

Everything here is deterministic: the same record, state snapshot and ruleset give the
same decision byte for byte (promise P7).
"""
