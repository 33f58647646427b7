#!/usr/bin/env bash
# cache-conformance.sh: runs the public HTTP cache conformance suite
# (http-tests/cache-tests, the suite behind cache-tests.fyi) against
# meshd's edge cache, through a real mesh on 127.0.0.1: the suite's
# client → edge (cache) → gateway → sidecar → the suite's server.
#
#   sudo CACHE_TESTS_DIR=/path/to/cache-tests bench/cache-conformance.sh
#   knobs: CACHE_TESTS_DIR (required) CACHE_SIZE MESHD MESHD_LOG_LEVEL KEEP
#          RESULTS (where the suite's JSON results go; default
#          /tmp/meshd-cache-conformance.json) TEST_ID (run one test, verbosely)
#
# CACHE_TESTS_DIR is a checkout of the suite (either its test-engine/
# layout or the older one with cli.mjs at the top); nothing of it is
# copied into this repository. Its npm dependencies are installed there
# when node_modules is missing. Needs Node.js ≥ 18.
#
# The edge only answers Host web.localhost. Node does not resolve
# *.localhost by itself, so the suite's processes run with a small
# preload (written into $WORK) that resolves *.localhost to 127.0.0.1
# and binds the suite's server to 127.0.0.1 instead of every interface:
# nothing in /etc/hosts is changed.
#
# Grading follows the suite's own results page (determineTestResult):
# a test without "kind", or with kind "required", is required; "optimal"
# and "check" are not. A required test counts as passed only when it ran
# and passed; setup failures and failed dependencies count against it
# here (the page shows them as neither pass nor fail), so the percentage
# printed is a lower bound of the page's.
set -euo pipefail

CACHE_SIZE="${CACHE_SIZE:-64MiB}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n "${CACHE_TESTS_DIR:-}" ]] || die "set CACHE_TESTS_DIR to a checkout of http-tests/cache-tests"
SUITE="$(cd "$CACHE_TESTS_DIR" && pwd)"
if [[ -f "$SUITE/test-engine/cli.mjs" ]]; then
	SUITE_SERVER="$SUITE/test-engine/server/server.mjs" SUITE_CLI="$SUITE/test-engine/cli.mjs"
elif [[ -f "$SUITE/cli.mjs" ]]; then
	SUITE_SERVER="$SUITE/server/server.mjs" SUITE_CLI="$SUITE/cli.mjs"
else
	die "$SUITE has neither test-engine/cli.mjs nor cli.mjs: not a cache-tests checkout"
fi
[[ -f "$SUITE/tests/index.mjs" ]] || die "$SUITE/tests/index.mjs missing"

setup
need curl:curl node:nodejs npm:npm
if [[ ! -d "$SUITE/node_modules" ]]; then
	log "installing the suite's npm dependencies in $SUITE"
	(cd "$SUITE" && npm install --omit=dev --no-audit --no-fund >"$WORK/logs/npm.log" 2>&1) ||
		die "npm install in $SUITE failed: see $WORK/logs/npm.log"
fi
build

ports 3 # sets PORTS
# shellcheck disable=SC2153 # PORTS is set by ports in lib.sh
ORIGIN_PORT=${PORTS[0]} MESHD_HTTP=${PORTS[1]} MESHD_HTTPS=${PORTS[2]}

# The preload: *.localhost resolves to loopback; a server listening on a
# bare port listens on 127.0.0.1 only.
cat >"$WORK/loopback.mjs" <<'EOF'
import dns from 'node:dns'
import http from 'node:http'
const lookup = dns.lookup
dns.lookup = function (host, opts, cb) {
  if (typeof opts === 'function') { cb = opts; opts = {} }
  if (typeof host === 'string' && (host === 'localhost' || host.endsWith('.localhost'))) {
    if (opts && opts.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }])
    return process.nextTick(cb, null, '127.0.0.1', 4)
  }
  return lookup.call(this, host, opts, cb)
}
const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (...args) {
  if (args.length === 1 && /^\d+$/.test(String(args[0]))) return listen.call(this, Number(args[0]), '127.0.0.1')
  return listen.apply(this, args)
}
EOF

# The suite's server serves files from its working directory besides its
# test endpoints: an empty healthz file there is what start_mesh polls.
mkdir -p "$WORK/origin-root"
: >"$WORK/origin-root/healthz"
log "starting the suite's server on 127.0.0.1:$ORIGIN_PORT"
# shellcheck disable=SC2016 # the inner script expands its own arguments
start cache-tests-server env npm_config_protocol=http npm_config_port="$ORIGIN_PORT" \
	npm_config_pidfile="$WORK/cache-tests-server.pid" \
	bash -c 'cd "$1" && exec node --import "$2" "$3"' _ "$WORK/origin-root" "$WORK/loopback.mjs" "$SUITE_SERVER"
SUITE_PID=$PID
wait_ok "the suite's server" "$SUITE_PID" cache-tests-server "http://127.0.0.1:$ORIGIN_PORT/healthz"

start_mesh "$CACHE_SIZE" "$MESHD_HTTP" "$MESHD_HTTPS"

BASE="http://web.localhost:$MESHD_HTTP"
RESULTS="${RESULTS:-/tmp/meshd-cache-conformance.json}"
mkdir -p "$(dirname "$RESULTS")"
if [[ -n "${TEST_ID:-}" ]]; then
	log "running $TEST_ID against $BASE"
	(cd "$SUITE" && npm_config_base="$BASE" npm_config_id="$TEST_ID" npm_package_config_id="" \
		node --no-warnings --import "$WORK/loopback.mjs" "$SUITE_CLI") || die "the suite's CLI failed"
	exit 0
fi
log "running the suite against $BASE (a few minutes: many tests pause 3 s)"
# The CLI reads npm's config variables; without npm, an empty id must be
# set as the package default too, or it looks for a test named "undefined".
(cd "$SUITE" && npm_config_base="$BASE" npm_config_id="" npm_package_config_id="" \
	node --no-warnings --import "$WORK/loopback.mjs" "$SUITE_CLI" >"$RESULTS.tmp" 2>"$WORK/logs/cli.log") ||
	die "the suite's CLI failed: $(tail -n 20 "$WORK/logs/cli.log")"
mv "$RESULTS.tmp" "$RESULTS"
log "results saved in $RESULTS"

# Grade as the suite's results page does, from the suite's own test
# definitions.
cat >"$WORK/grade.mjs" <<'EOF'
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
const [suiteDir, resultsFile] = process.argv.slice(2)
const suites = (await import(pathToFileURL(path.join(suiteDir, 'tests/index.mjs')))).default
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))
const tests = new Map()
for (const s of suites) for (const t of s.tests) tests.set(t.id, { ...t, suite: s.id })
const kindOf = t => t.kind === undefined ? 'required' : t.kind
const memo = new Map()
// outcome: pass, fail, setup, dependency, retry, untested.
function outcome (id) {
  if (memo.has(id)) return memo.get(id)
  const t = tests.get(id)
  const r = results[id]
  let o
  if (r === undefined) {
    o = 'untested'
  } else if ((t.depends_on || []).some(d => outcome(d) !== 'pass')) {
    o = 'dependency'
  } else if (r !== true && r[0] === 'Setup') {
    o = r[1] === 'retry' ? 'retry' : 'setup'
  } else {
    o = r === true ? 'pass' : 'fail'
  }
  memo.set(id, o)
  return o
}
const byKind = {}
const failing = []
for (const [id, t] of tests) {
  const o = outcome(id)
  if (o === 'untested') continue
  const k = kindOf(t)
  byKind[k] ??= { total: 0, pass: 0, fail: 0, setup: 0, dependency: 0, retry: 0 }
  byKind[k].total++
  byKind[k][o]++
  if (k === 'required' && o !== 'pass') {
    const r = results[id]
    failing.push(`  ${o.padEnd(10)} ${id} (${t.suite}): ${r === true ? 'passed, but a dependency did not' : r[1]}`)
  }
}
const pct = (a, b) => b ? (100 * a / b).toFixed(1) : '0.0'
const req = byKind.required ?? { total: 0, pass: 0 }
console.log(`required: ${req.pass}/${req.total} (${pct(req.pass, req.total)}%)`)
// The page shows setup and dependency failures as neither pass nor fail.
console.log(`required, passes among pass+fail as the results page marks them: ${req.pass}/${req.pass + (req.fail ?? 0)} (${pct(req.pass, req.pass + (req.fail ?? 0))}%)`)
for (const [k, c] of Object.entries(byKind)) {
  console.log(`  ${k.padEnd(9)} ${c.pass}/${c.total} passed (${pct(c.pass, c.total)}%); fail ${c.fail}, setup ${c.setup}, dependency ${c.dependency}, retry ${c.retry}`)
}
console.log(`failing required tests: ${failing.length}`)
for (const f of failing.sort()) console.log(f)
EOF
node "$WORK/grade.mjs" "$SUITE" "$RESULTS"
