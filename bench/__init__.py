"""The performance benchmark (issue 9): `make bench`, `make bench-clients`. Not part of the tests."""
