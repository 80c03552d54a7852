"""wanx-mcp: Alibaba Cloud DashScope Wan image-to-video as an MCP server and a typed Python library."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wanx-mcp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
