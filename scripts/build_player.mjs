#!/usr/bin/env node
// Builds wanx_mcp/player/player.html: scripts/player/player.html with scripts/player/player.js and the official
// @modelcontextprotocol/ext-apps app runtime bundled inline (esbuild), so the page loads nothing at run time.
//
//   (cd tests/browser && npm ci) && node scripts/build_player.mjs
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const nodeModules = join(root, "tests", "browser", "node_modules");
const esbuild = createRequire(join(nodeModules, "..", "package.json"))("esbuild");

// zod's translated error messages (all but English) are never shown here: leave them out (a third of the size).
const englishOnly = {
  name: "zod-english-only",
  setup(build) {
    build.onLoad({ filter: /[\\/]zod[\\/]v4[\\/]locales[\\/][^\\/]+\.js$/ }, (args) =>
      /[\\/](en|index)\.js$/.test(args.path) ? undefined : { contents: "export default function () { return {}; }" },
    );
  },
};

const built = await esbuild.build({
  plugins: [englishOnly],
  entryPoints: [join(root, "scripts", "player", "player.js")],
  nodePaths: [nodeModules],
  bundle: true,
  format: "esm",
  minify: true,
  legalComments: "eof",
  target: "es2022",
  write: false,
});
const script = built.outputFiles[0].text.replaceAll("</script", "<\\/script");
const template = readFileSync(join(root, "scripts", "player", "player.html"), "utf8");
const html = template.replace("/*BUNDLE*/", () => script);
writeFileSync(join(root, "wanx_mcp", "player", "player.html"), html);
console.log(`wanx_mcp/player/player.html: ${html.length} bytes`);
