"""Keel's benchmarks: run on demand (`python -m bench.<name>`), never by `make test`."""
