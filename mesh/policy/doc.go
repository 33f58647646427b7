// Package policy is the pure core of meshd's traffic policy: it parses
// and validates the policy document, signs and verifies it, and matches
// a request to a route. Bytes and keys go in, decisions come out; it
// imports no other meshd package.
package policy
