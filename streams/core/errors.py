"""The base of partner-guard's own errors.

Every error the project raises on purpose derives from `PartnerGuardError`: a refused
ruleset, setting, key or start-up check, an undecodable consent string, a corrupt state
store, so a caller can tell the guard's own errors from a bug. Those that stop a command
before it does its work derive from `RefusalError`: the command line reports all of them in
one place, in one format (`refusing to start: <message>`, exit 2). Messages name the
setting, file or value at fault and never carry payload or key material.

It lives in the core because the core imports only itself; the shell's errors derive from
it as well. Errors that are also a `ValueError` or `RuntimeError` stay one, so existing
`except` clauses keep working.
"""

from __future__ import annotations


class PartnerGuardError(Exception):
    """An error of partner-guard's own; its message is for the person running the command."""


class RefusalError(PartnerGuardError):
    """The command refuses to do its work: settings, rules, keys, files or the broker are not
    usable. Reported as `refusing to start: <message>`, exit 2."""
