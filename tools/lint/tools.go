//go:build tools

// Package lint pins the linters make lint runs, apart from the notation and oras CLIs of
// ../go.mod so that neither changes the other's dependencies.
package lint

import _ "honnef.co/go/tools/cmd/staticcheck"
