"""LoopTool: closed-loop data and model evolution for tool-calling language models."""

__version__ = "0.1.0"
