"""Tool simulator service: schema-consistent, stateful responses to tool calls.

Logic lives in plain modules (``simulator``, ``executable``, ``fake``); ``server`` is a thin gRPC
servicer and ``client`` its Python client.
"""
