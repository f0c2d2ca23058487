"""DICOMweb (PS3.18) front door: QIDO-RS (``qido``, ``routes``) and WADO-RS retrieve and
metadata (``wado``, ``accept``); WADO-RS frames/bulk data/rendered and STOW-RS follow.
Added to the HTTP server through the ``pacs.http`` entry point."""
