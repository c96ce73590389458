"""What the guard writes: partner records, the blocked-record format, payload protection.

Shared by the pipeline that writes them and the auditors that read them back (replay,
republish, the demo's leak audit), so neither side imports the other.
"""
