"""Deterministic generator of realistic synthetic studies, and a small committed set."""
