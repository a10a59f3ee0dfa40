// Package cliutil holds the few pieces every binary of the project shares: the version string,
// the logger set-up for --debug, output-format handling and atomic file writes.
package cliutil

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
)

// Version is set at build time with -ldflags "-X .../internal/cliutil.Version=...".
var Version = "0.1.0"

// Logger returns the logger for a command: warnings and errors by default, everything with
// debug. Secrets are only ever logged at debug level, and then only by the packages that hold them.
func Logger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelWarn
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// CheckFormat validates an -o value.
func CheckFormat(format string) error {
	switch format {
	case "text", "json":
		return nil
	}
	return fmt.Errorf("unknown output format %q (want text or json)", format)
}

// WriteJSON writes v as indented JSON followed by a newline.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// EnvOr returns the environment variable key, or def when it is unset or empty.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// ShortLivedGC sets the garbage collector of a process that lives for one command (the plugin's
// get-plugin-metadata and generate-envelope, oras-attest, the Ratify verifier run per image) to
// collect when the heap has grown by 400% instead of 100%: their live heaps are a few MiB, and at
// the default a collection runs while CEL compiles the rules, competing for the CPUs with the
// work the command waits for. On the local stack (2 cores), medians of interleaved runs:
// oras-attest verify 80.7-84.9 -> 74.2-74.4 ms (31 runs, twice), attested notation sign
// 213.6 -> 206.0 ms (21 runs). A GOGC set in the environment is left alone.
//
// It also sets a soft memory limit of shortLivedMemoryLimit (unless GOMEMLIMIT is set), so that
// growth by 400% stays bounded when the live heap is not a few MiB: a registry answering with
// pages of 4 MiB of annotations, decoded and dropped page after page, took `oras-attest verify`'s
// heap to 355 MiB with GOGC alone, to 121 MiB with the limit (the limit only makes the collector
// run sooner near it; a command whose live heap stays under it runs as before).
func ShortLivedGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(shortLivedMemoryLimit)
	}
}

// shortLivedMemoryLimit is ShortLivedGC's soft memory limit.
const shortLivedMemoryLimit = 128 << 20
