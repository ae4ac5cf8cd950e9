//go:build tools

// Package tools pins runc, the OCI runtime containerd's runc shim runs for the
// Tartan node tests: `go build` it from this module (see build.sh).
package tools

import (
	_ "github.com/opencontainers/runc"
)
