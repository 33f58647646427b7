// Package pebbletest runs Pebble, the ACME test server (Debian package
// "pebble"), on loopback for tests of meshd's ACME certificates: the unit
// tests of tlsmgr and the process end-to-end tests of the edge.
//
// Pebble validates challenges by resolving the requested name and
// connecting to it. The package gives Pebble its own tiny DNS server on
// 127.0.0.1, which answers every A query with 127.0.0.1 and records every
// name asked, so validation reaches the test's listeners and a test can
// prove that no validation was ever attempted for a name.
//
// Use New to prepare a server (its directory URL and API root are known
// at once, before anything is listening on the ports Pebble validates
// against), then Start with the HTTP-01 and TLS-ALPN-01 ports. Without the
// pebble binary on PATH, New skips the test, except when CI=true, where
// it fails it.
package pebbletest
