// A minimal MCP Apps host for tests/test_player.py, built from the official parts: the MCP TypeScript client
// (streamable HTTP) and the ext-apps host bridge (AppBridge). Served on the wanx-mcp server's own origin (the test
// routes /host/ to this page), it finds the UI bound to generate_and_wait, renders it in a sandboxed iframe with a
// strict CSP built from the resource's _meta.ui.csp, calls the tool and hands the view its input and result.
//
//   /host/index.html?token=T&image=PATH&prompt=TEXT   ->   window.hostState: {phase, error, task}
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { AppBridge, PostMessageTransport, getToolUiResourceUri } from "@modelcontextprotocol/ext-apps/app-bridge";

const APPS = "io.modelcontextprotocol/ui";
const APP_MIME = "text/html;profile=mcp-app";
const state = (window.hostState = { phase: "starting", error: null, task: null });

/** The iframe's Content-Security-Policy: nothing from the network beyond what the resource asks for. */
function cspFor(ui) {
  const csp = ui?.csp ?? {};
  const list = (domains) => (domains ?? []).join(" ");
  const resources = list(csp.resourceDomains);
  return [
    "default-src 'none'",
    `script-src 'unsafe-inline' ${resources}`,
    `style-src 'unsafe-inline' ${resources}`,
    `img-src data: blob: ${resources}`,
    `media-src data: blob: ${resources}`,
    `font-src data: ${resources}`,
    `connect-src ${list(csp.connectDomains) || "'none'"}`,
    `frame-src ${list(csp.frameDomains) || "'none'"}`,
    `base-uri ${list(csp.baseUriDomains) || "'none'"}`,
  ].join("; ");
}

async function main() {
  const params = new URLSearchParams(location.search);
  const client = new Client(
    { name: "wanx-test-host", version: "1.0.0" },
    { capabilities: { extensions: { [APPS]: { mimeTypes: [APP_MIME] } } } },
  );
  const headers = { Authorization: `Bearer ${params.get("token")}` };
  await client.connect(new StreamableHTTPClientTransport(new URL("/mcp", location.href), { requestInit: { headers } }));

  const tool = (await client.listTools()).tools.find((t) => t.name === "generate_and_wait");
  const uri = getToolUiResourceUri(tool);
  if (!uri) throw new Error("generate_and_wait has no _meta.ui.resourceUri");
  const [content] = (await client.readResource({ uri })).contents;
  if (content.mimeType !== APP_MIME) throw new Error(`${uri} is ${content.mimeType}, not ${APP_MIME}`);
  const csp = `<meta http-equiv="Content-Security-Policy" content="${cspFor(content._meta?.ui)}">`;
  state.phase = "rendering";

  const iframe = document.createElement("iframe");
  iframe.sandbox = "allow-scripts";
  iframe.title = "wanx player";
  document.getElementById("app").append(iframe);
  const bridge = new AppBridge(
    client,
    { name: "wanx-test-host", version: "1.0.0" },
    { serverTools: {}, serverResources: {}, logging: {} },
    { hostContext: { theme: "light", displayMode: "inline" } },
  );
  bridge.onsizechange = ({ height }) => {
    if (height) iframe.style.height = `${height}px`;
  };
  const initialized = new Promise((resolve) => (bridge.oninitialized = resolve));
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = content.text.replace("<head>", `<head>${csp}`);
  await initialized;

  const args = { image: params.get("image"), prompt: params.get("prompt"), resolution: "480P", wait_seconds: 0 };
  state.phase = "calling";
  await bridge.sendToolInput({ arguments: args });
  const result = await client.callTool({ name: "generate_and_wait", arguments: args });
  state.task = result.structuredContent ?? null;
  await bridge.sendToolResult(result);
  state.phase = "delivered";
}

main().catch((error) => {
  state.phase = "failed";
  state.error = String(error?.stack ?? error);
});
