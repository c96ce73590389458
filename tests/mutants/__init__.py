"""Promise mutants: each takes one promise's mechanism out of a copy of the tree and names the
tests that must then fail (`make mutants`; never collected by `make test`)."""
