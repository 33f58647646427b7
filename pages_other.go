//go:build !linux

package main

// dropImagePages is Linux's alone (pages_linux.go); elsewhere the binary's
// pages stay mapped.
func dropImagePages() (int64, error) { return 0, nil }
