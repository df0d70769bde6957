// Builds web/static/vendor/ (git-ignored) from the pinned node_modules: `make assets` runs it
// after `npm ci`. Everything a page loads comes from here; nothing from a CDN at run time.
// The folder is built beside the old one and swapped in at the end, so an interrupted
// build never leaves a half-built vendor/ behind.
import { build } from 'esbuild';
import { cpSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, '..', 'static', 'vendor');
const staging = `${target}.building`;
const modules = join(here, 'node_modules');

rmSync(staging, { recursive: true, force: true });
mkdirSync(staging, { recursive: true });

// window.SopflowDiagram (bpmn-js viewer/modeler, bpmn-js-differ) and its one stylesheet;
// the bpmn-font files land beside diagram.css.
await build({
  entryPoints: [join(here, 'src', 'diagram.js'), join(here, 'src', 'diagram.css')],
  outdir: staging,
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  legalComments: 'linked',
  loader: { '.eot': 'file', '.svg': 'file', '.ttf': 'file', '.woff': 'file', '.woff2': 'file' },
  assetNames: 'fonts/[name]-[hash]',
  logLevel: 'warning',
});

// Swagger UI for /docs (FastAPI's get_swagger_ui_html points here).
const swagger = join(staging, 'swagger-ui');
mkdirSync(swagger);
for (const name of ['swagger-ui-bundle.js', 'swagger-ui.css', 'favicon-32x32.png', 'LICENSE', 'NOTICE']) {
  cpSync(join(modules, 'swagger-ui-dist', name), join(swagger, name));
}

rmSync(target, { recursive: true, force: true });
renameSync(staging, target);
console.log(`built ${target}`);
