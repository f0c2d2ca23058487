"""DICOMweb (PS3.18) front door: STOW-RS, QIDO-RS, WADO-RS. Built in its own issue."""
