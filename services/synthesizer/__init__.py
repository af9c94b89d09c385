"""Dialogue synthesizer: the Planner / User / Assistant / Tool multi-agent simulation.

``plan`` (tasks over a tool subset), ``agents`` (programmatic and LLM agents behind one interface),
``engine`` (one dialogue, quality filters, the resumable, deterministic, concurrent run),
``server`` (thin gRPC servicer) and ``client``.
"""
