"""The REST API: thin, it starts workflows, sends updates and reads queries and Postgres."""
