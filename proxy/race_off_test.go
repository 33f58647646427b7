//go:build !race

package proxy

// raceDetector is true in a -race build.
const raceDetector = false
