"""Shared hypothesis settings and strategies for the property-based tests.

A property states what the library promises for *any* input of a kind (a box, a mask,
a config, a cache entry...): a result with stated properties, or one typed error.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

#: Any JSON value (nested lists and objects of numbers, strings, booleans, null).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
