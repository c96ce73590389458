"""Other engines that run the shared decision path (the Faust app), and what every engine owes.

An engine feeds input records to `streams.runtime.pipeline.decider.RecordDecider` and delivers
what it returns. It owes, built from `streams.runtime.ops` and `streams.runtime.kafka.calls`
(never copied; docs/engines.md):

- readiness and liveness: `/metrics`, `/readyz` (state loaded, deciding, broker answering) and
  `/healthz` (the loop's `Heartbeat`) on one port (`serve_http`, `Readiness`, `BrokerWatch`);
- heartbeat and watchdog: a Kafka call still blocked 10 s past its timeout is hung
  (`CallWatchdog`): one log line naming it, exit 4;
- lag metrics: `partner_guard_state_lag_records`, `partner_guard_consumer_lag_records`;
- transaction metrics: `partner_guard_transactions_total`, or a named gap;
- SIGTERM/SIGINT: finish the open batch, deliver and commit it, exit 0;
- refusals before connecting: `refusing to start: <what, where, fix>`, exit 2.

A clause an engine cannot meet is a named gap (docs/engines.md, the start line), and one that
weakens a promise refuses start until acknowledged (the Faust engine's at least once: P8).
"""
