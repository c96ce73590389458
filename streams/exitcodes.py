"""Process exit codes of every `partner-guard` command, in one place (docs/operations.md lists them).

A supervisor, a CI job and a shell script read these; they are a stable API like reason codes.
"""

from __future__ import annotations

OK = 0
# A check ran and found a problem: `rules test` failed a case, `replay` found a decision it
# could not reproduce, the demo saw a leak or an input that ended neither forwarded nor blocked.
CHECK_FAILED = 1
# The command could not do its work and did nothing: invalid settings or rules, a missing
# key, an unreachable broker, a port in use, an unreadable file (`refusing to start: ...`).
REFUSED = 2
# `run`: the job stopped on an error it must not continue past (a transaction that can
# neither commit nor abort, a fenced producer); a supervisor restarts it.
JOB_FAILED = 3
# `run`: a Kafka call never returned (librdkafka#5456): a transactional one, `init_transactions`
# at start, or closing the clients at stop. The process ends itself so a supervisor restarts
# it; the restart aborts the open transaction and redoes the batch.
JOB_HUNG = 4
# `replay`: no mismatch, but some blocked records were not valid records.
REPLAY_INVALID_RECORDS = 3
# `replay`: the filters selected no record, so nothing was verified (0 with --allow-empty).
REPLAY_NOTHING_SELECTED = 4
