// Command procstat is the bench's process meter (scripts/bench.sh): it runs a command several
// times and prints the medians of its wall time, its CPU time (user + system, from the kernel's
// rusage) and its minor page faults; or, with -faultcost, what one page fault costs on this
// machine. Start-up costs of short commands are mostly page faults and CPU, and a page fault's
// price varies by two orders of magnitude between machines (virtualisation), so the bench reports
// both next to its wall times.
//
//	procstat [-n RUNS] [-stdin TEXT] -- COMMAND [ARG...]   prints "WALL_MS CPU_MS FAULTS"
//	procstat -faultcost                                     prints "MICROSECONDS_PER_FAULT"
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 7, "runs")
	stdin := flag.String("stdin", "", "text written to the command's standard input")
	faultCost := flag.Bool("faultcost", false, "measure the cost of one page fault instead")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: procstat [-n RUNS] [-stdin TEXT] -- COMMAND [ARG...]\n       procstat -faultcost")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *faultCost {
		us, err := faultMicros(16384)
		if err != nil {
			fmt.Fprintln(os.Stderr, "procstat:", err)
			os.Exit(1)
		}
		fmt.Printf("%.2f\n", us)
		return
	}
	if flag.NArg() == 0 || *n < 1 {
		flag.Usage()
		os.Exit(2)
	}
	s, err := measure(*n, *stdin, flag.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "procstat:", err)
		os.Exit(1)
	}
	fmt.Printf("%.1f %.1f %d\n", s.wallMS, s.cpuMS, s.faults)
}

// stats are the medians of several runs.
type stats struct {
	wallMS, cpuMS float64
	faults        int64
}

// measure runs argv n times and returns the medians; a run that fails is an error.
func measure(n int, stdin string, argv []string) (stats, error) {
	var wall, cpu []float64
	var faults []int64
	for range n {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdin = strings.NewReader(stdin)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		elapsed := time.Since(start)
		if err != nil {
			return stats{}, fmt.Errorf("%s: %w: %.200s", strings.Join(argv, " "), err, out)
		}
		ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		if !ok {
			return stats{}, errors.New("no rusage on this platform")
		}
		wall = append(wall, float64(elapsed.Microseconds())/1000)
		cpu = append(cpu, float64(time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Microseconds())/1000)
		faults = append(faults, ru.Minflt)
	}
	return stats{median(wall), median(cpu), median(faults)}, nil
}

// median returns the middle value (the lower one of an even count).
func median[T int64 | float64](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// faultMicros touches pages fresh anonymous pages once each and returns the time per page: the
// cost of a minor page fault (zeroing the page included).
func faultMicros(pages int) (float64, error) {
	size := pages * os.Getpagesize()
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return 0, fmt.Errorf("mmap: %w", err)
	}
	defer syscall.Munmap(b)
	start := time.Now()
	for i := 0; i < size; i += os.Getpagesize() {
		b[i] = 1
	}
	return float64(time.Since(start).Nanoseconds()) / 1000 / float64(pages), nil
}
