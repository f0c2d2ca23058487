"""The one query model: C-FIND identifiers and QIDO-RS parameters become a :class:`Query`,
evaluated by one SQL translator (PS3.4 C.2.2.2 matching)."""

from .matchers import element_values, make_matcher
from .model import Level, Matcher, MatchKind, Query
from .run import Match, search

__all__ = ["Level", "Match", "MatchKind", "Matcher", "Query", "element_values", "make_matcher", "search"]
