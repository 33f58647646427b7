// Package bench holds meshd's benchmark scripts (edge-tls.sh and
// cache-hits.sh, with their shared lib.sh) and the tests of those scripts:
// the load-generator output parsers, the statistics and the CPU reading
// from /proc are run through bash against recorded wrk and h2load output
// in testdata/, so a change of either tool's format fails here rather than
// turning into wrong numbers in a table.
//
// The package has no Go code of its own; bench/origin is the application
// every benchmarked server forwards to. README.md says how to run the
// scripts and read their tables.
package bench
