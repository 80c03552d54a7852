"""The reference for (3): a bare ``MCPServer`` with one echo tool, over stdio."""

from mcp.server import MCPServer

server = MCPServer("bare")


@server.tool()
def echo(text: str) -> str:
    """Return ``text``."""
    return text


if __name__ == "__main__":
    server.run()
