"""Offline commands on the same core: `decide` over JSON Lines and rule test cases."""
