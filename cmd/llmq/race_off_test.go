//go:build !race

package main

// raceEnabled: this test binary (and the llmq it builds) run the race detector.
const raceEnabled = false
