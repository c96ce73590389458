"""partner-guard: a privacy guard between internal event topics and advertising-partner feeds."""

__version__ = "0.1.0"
