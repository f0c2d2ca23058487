"""Modality worklist, MPPS, reading worklist and reports. Built in its own issue."""
