package cliutil

import (
	"runtime/debug"
	"testing"
)

func TestShortLivedGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	tests := []struct {
		env  string
		want int
	}{
		{"", 400},   // no GOGC: the short-lived setting
		{"50", 100}, // GOGC given: what was in force stays
	}
	for _, tc := range tests {
		t.Setenv("GOGC", tc.env)
		debug.SetGCPercent(100)
		ShortLivedGC()
		if got := debug.SetGCPercent(100); got != tc.want {
			t.Errorf("GOGC=%q: GC percent %d, want %d", tc.env, got, tc.want)
		}
	}
}

// TestShortLivedMemoryLimit: without GOMEMLIMIT, ShortLivedGC sets its soft memory limit; with
// it, the limit in force stays.
func TestShortLivedMemoryLimit(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	const none = int64(1<<63 - 1) // math.MaxInt64: no limit
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(none))
	tests := []struct {
		env  string
		want int64
	}{
		{"", shortLivedMemoryLimit},
		{"1GiB", none},
	}
	for _, tc := range tests {
		t.Setenv("GOMEMLIMIT", tc.env)
		debug.SetMemoryLimit(none)
		ShortLivedGC()
		if got := debug.SetMemoryLimit(-1); got != tc.want {
			t.Errorf("GOMEMLIMIT=%q: limit %d, want %d", tc.env, got, tc.want)
		}
	}
}
