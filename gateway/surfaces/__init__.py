"""One module per public API surface."""
