"""The archive service: settings, storage, index, ingest, events, DIMSE server, CLI."""
