"""Expander service: error-driven data expansion (EDDE) from verified failures.

``expand`` holds the algorithm (plain Python, no gRPC), ``server`` the thin gRPC servicer and
``client`` a typed client for ``looptool.v1.Expander``.
"""
