"""DICOMweb (PS3.18) front door: QIDO-RS (``qido``, ``routes``) for now; STOW-RS and
WADO-RS follow. Added to the HTTP server through the ``pacs.http`` entry point."""
