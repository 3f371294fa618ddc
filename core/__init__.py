"""Keel's plumbing: settings, logging, database and the Temporal client factory."""
