"""The running exchange: wire messages, book, auction, call pipeline, servers and CLI."""
