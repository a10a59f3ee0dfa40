//go:build tools

// Package tools pins the exact versions of the CLIs the end-to-end tests and the demo run:
// the real notation and oras clients, built from the Go module proxy. It is a separate module so
// that their dependency trees never leak into the project's own go.mod.
package tools

import (
	_ "github.com/notaryproject/notation/cmd/notation"
	_ "oras.land/oras/cmd/oras"
)
