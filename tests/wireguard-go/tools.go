//go:build tools

// Package tools pins wireguard-go, the stock userspace WireGuard the
// interoperability test runs against the wireguard backend.
package tools

import _ "golang.zx2c4.com/wireguard"
