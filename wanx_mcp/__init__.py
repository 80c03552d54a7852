"""wanx-mcp: Alibaba Cloud DashScope Wan image-to-video as an MCP server and a typed Python library."""

#: The one place the version is written (pyproject.toml reads it from here; importlib.metadata costs start-up).
__version__ = "0.1.0"
