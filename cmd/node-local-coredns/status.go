package main

import (
	"context"
	"io"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/status"
)

// runStatus is the status command: it exits 0 only when the node's DNS is
// really served by the agent, 1 when it is not, 2 on a bad flag.
func runStatus(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := config.ParseStatus(args, getenv, stderr)
	if code, done := parsed(err, stderr, "node-local-coredns status"); done {
		return code
	}
	r := status.Check(context.Background(), cfg)
	r.Write(stdout)
	if !r.Served() {
		return 1
	}
	return 0
}
