//go:build race

package router

// raceEnabled: timing-sensitive measurements skip under the race detector.
const raceEnabled = true
