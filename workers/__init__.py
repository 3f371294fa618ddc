"""Process entry points: the `keel` CLI, the worker, the API server and the dev stack."""
