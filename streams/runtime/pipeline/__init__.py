"""The batch pipeline: the job loop, its transaction, deciding records, building output records."""
