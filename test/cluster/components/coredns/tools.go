//go:build tools

// Package coredns lists the CoreDNS command the cluster tests build.
package coredns

import _ "github.com/coredns/coredns"
