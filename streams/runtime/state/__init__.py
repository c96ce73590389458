"""The consent and sign-up status tables: packed tables, the disk store, the topic reader."""
