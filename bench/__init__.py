"""The performance benchmark (issue 9): `make bench`, `make bench-clients`; not run by the tests."""
