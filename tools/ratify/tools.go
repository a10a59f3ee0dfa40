//go:build tools

// Package tools pins the Ratify v1 CLI that the end-to-end tests run the token verifier under
// (policy/ratify): Ratify v1.4.6, the last v1 release, whose exec plugin protocol the verifier
// speaks. It is a module of its own, apart from tools/go.mod, because its dependency tree
// (Kubernetes, OPA, cloud SDKs) would otherwise move the versions that build notation and oras.
//
// Its go.sum starts from Ratify v1.4.6's own: the checksum database does not know one of its
// pseudo-versions (github.com/open-policy-agent/frameworks/constraint), so `go install …@v1.4.6`
// and a fresh `go mod tidy` fail, while a build against a complete go.sum needs no lookup
// (/work/shared/reference/oras-ratify.md §3.2).
package tools

import _ "github.com/ratify-project/ratify/cmd/ratify"
