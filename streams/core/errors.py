"""The base of partner-guard's own errors.

Every error the project raises on purpose derives from `PartnerGuardError`: a refused
ruleset, setting, key or start-up check, an undecodable consent string, a corrupt state
store. The command line reports all of them in one place, in one format, and a caller can
tell the guard's own refusals from a bug. Messages name the setting, file or value at fault
and never carry payload or key material.

It lives in the core because the core imports only itself; the shell's errors derive from
it as well. Errors that are also a `ValueError` or `RuntimeError` stay one, so existing
`except` clauses keep working.
"""

from __future__ import annotations


class PartnerGuardError(Exception):
    """An error of partner-guard's own; its message is for the person running the command."""
