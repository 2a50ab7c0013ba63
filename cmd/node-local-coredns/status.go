package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/node-local-coredns/node-local-coredns/internal/config"
	"github.com/node-local-coredns/node-local-coredns/internal/status"
)

// runStatus is the status command: it exits 0 only when the node's DNS is
// really served by the agent, 1 when it is not, 2 on a bad flag.
func runStatus(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := config.ParseStatus(args, getenv, stderr)
	if errors.Is(err, config.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "node-local-coredns status:", err)
		return 2
	}
	r := status.Check(context.Background(), cfg)
	r.Write(stdout)
	if !r.Served() {
		return 1
	}
	return 0
}
