package main

import (
	"os"
	"testing"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []int64
		want int64
	}{
		{[]int64{5}, 5},
		{[]int64{3, 1, 2}, 2},
		{[]int64{4, 1, 3, 2}, 2},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

// TestMeasure runs this test binary in a mode that allocates, and checks that its faults and CPU
// time are counted.
func TestMeasure(t *testing.T) {
	if os.Getenv("PROCSTAT_CHILD") == "1" {
		b := make([]byte, 8<<20)
		for i := range b {
			b[i] = 1
		}
		os.Exit(0)
	}
	t.Setenv("PROCSTAT_CHILD", "1")
	s, err := measure(3, "", []string{os.Args[0], "-test.run", "^TestMeasure$"})
	if err != nil {
		t.Fatal(err)
	}
	// 8 MiB touched is 2048 pages of 4 KiB: the faults must show it.
	if s.faults < 2048 || s.cpuMS <= 0 || s.wallMS <= 0 {
		t.Errorf("measured %+v for a child that touches 8 MiB", s)
	}
	if _, err := measure(1, "", []string{os.Args[0], "-test.run", "^TestNothing$", "-test.badflag"}); err == nil {
		t.Error("a failing command is not an error")
	}
}

func TestFaultMicros(t *testing.T) {
	us, err := faultMicros(256)
	if err != nil {
		t.Fatal(err)
	}
	if us <= 0 {
		t.Errorf("%v µs per fault", us)
	}
}
