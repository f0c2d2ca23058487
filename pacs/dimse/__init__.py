"""DIMSE front door (PS3.7, PS3.4): a thin pynetdicom adapter over the archive service."""
