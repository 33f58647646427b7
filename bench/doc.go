// Package bench holds meshd's benchmark scripts (edge-tls.sh,
// cache-hits.sh, load.sh, cache-conformance.sh, with their shared lib.sh)
// and the tests of those scripts: the load-generator output parsers, the
// statistics and the CPU and memory readings from /proc are run through
// bash against recorded wrk, h2load and vegeta output in testdata/, so a
// change of a tool's format fails here rather than turning into wrong
// numbers in a table.
//
// The package has no Go code of its own; bench/origin is the application
// every benchmarked server forwards to. README.md says how to run the
// scripts and read their tables.
package bench
