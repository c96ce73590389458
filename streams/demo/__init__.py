"""`partner-guard demo`: the newcomer's first run, end to end on the embedded broker."""
