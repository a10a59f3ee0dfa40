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
