//go:build tools

// Package tools pins Prometheus for Tartan's real-node tests. Debian's
// package is built without Kubernetes service discovery, so the tests build
// the real thing from the pinned module (see ../build.sh).
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
