#!/usr/bin/env node
// One generation through the official TypeScript MCP SDK client, against wanx-mcp.
//
//   node sdk_client.mjs --image PATH [--era legacy|auto] [--header "Name: value"]... --url http://127.0.0.1:P/mcp
//   node sdk_client.mjs --image PATH [--era legacy|auto] -- python -m wanx_mcp serve --simulate
//
// Lists tools and resources, calls list_models and generate_and_wait (with a progress callback), checks the
// results, prints one JSON summary line on stdout and exits 0; on any failure it prints the reason and exits 1.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { StdioClientTransport } from "@modelcontextprotocol/client/stdio";

const TOOLS = ["create_video_task", "get_task", "generate_and_wait", "cancel_task", "list_tasks", "list_models"];

function parseArgs(argv) {
  const opts = { era: "legacy", headers: {}, command: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      opts.command = argv.slice(i + 1);
      break;
    } else if (arg === "--image") opts.image = argv[++i];
    else if (arg === "--url") opts.url = argv[++i];
    else if (arg === "--era") opts.era = argv[++i];
    else if (arg === "--header") {
      const [name, ...value] = argv[++i].split(":");
      opts.headers[name.trim()] = value.join(":").trim();
    } else throw new Error(`unknown argument ${arg}`);
  }
  if (!opts.image || (!opts.url) === !opts.command.length) {
    throw new Error("usage: --image PATH and either --url URL or -- COMMAND...");
  }
  return opts;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const transport = opts.url
    ? new StreamableHTTPClientTransport(new URL(opts.url), { requestInit: { headers: opts.headers } })
    : new StdioClientTransport({
        command: opts.command[0],
        args: opts.command.slice(1),
        env: Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined)),
        stderr: "inherit",
      });
  const client = new Client(
    { name: "wanx-interop-sdk-client", version: "1.0.0" },
    { versionNegotiation: { mode: opts.era } },
  );
  await client.connect(transport);
  try {
    const tools = (await client.listTools()).tools.map((tool) => tool.name);
    for (const name of TOOLS) check(tools.includes(name), `tools/list lacks ${name}: ${tools}`);
    const resources = (await client.listResources()).resources.map((r) => r.uri);
    check(resources.includes("wanx://models"), `resources/list lacks wanx://models: ${resources}`);
    const templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate);
    check(templates.includes("wanx://tasks/{task_id}"), `resources/templates/list: ${templates}`);

    const models = await client.callTool({ name: "list_models", arguments: {} });
    check(!models.isError, `list_models failed: ${JSON.stringify(models.content)}`);
    const modelNames = (models.structuredContent?.models ?? []).map((m) => m.name);
    check(modelNames.length > 0, `list_models structuredContent: ${JSON.stringify(models.structuredContent)}`);

    const progress = [];
    const result = await client.callTool(
      { name: "generate_and_wait", arguments: { image: opts.image, prompt: "leaves fall", resolution: "480P" } },
      { onprogress: (p) => progress.push(p), resetTimeoutOnProgress: true, timeout: 60_000 },
    );
    const task = result.structuredContent ?? {};
    check(!result.isError, `generate_and_wait failed: ${JSON.stringify(result.content)}`);
    check(task.status === "SUCCEEDED", `generate_and_wait status ${task.status}: ${JSON.stringify(task)}`);
    check(typeof task.video_path === "string" && task.video_path, `no video_path: ${JSON.stringify(task)}`);
    check(progress.length >= 1, "no progress notification arrived during generate_and_wait");

    const read = await client.readResource({ uri: `wanx://tasks/${task.task_id}` });
    check(JSON.parse(read.contents[0].text).status === "SUCCEEDED", `wanx://tasks/{id}: ${JSON.stringify(read)}`);

    const summary = {
      ok: true,
      transport: opts.url ? "http" : "stdio",
      protocol_version: client.getNegotiatedProtocolVersion(),
      server: client.getServerVersion(),
      tools,
      resources,
      models: modelNames,
      task_id: task.task_id,
      status: task.status,
      video_path: task.video_path,
      progress: progress.length,
      last_progress: progress.at(-1),
    };
    console.log(JSON.stringify(summary));
  } finally {
    await client.close();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`sdk_client: ${error?.stack ?? error}`);
    process.exit(1);
  },
);
