"""Benchmarks of wanx-mcp against the official DashScope SDK and the physical limits: ``python -m bench``."""
