// Command coredns-stock is stock CoreDNS, the benchmark's peer: CoreDNS's own
// coremain with the same plugins compiled in as node-local-coredns.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The same plugin set as the agent.
	_ "github.com/node-local-coredns/node-local-coredns/internal/server"
)

func main() { coremain.Run() }
