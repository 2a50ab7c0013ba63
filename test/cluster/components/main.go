// Command components builds the real Kubernetes components the cluster
// tests run (kube-apiserver, kube-proxy, etcd, CoreDNS) from the modules
// pinned in its subdirectories, or finds them in the cache, and prints
// their paths. make test runs it before the tests, so that the cold build
// (minutes) is not counted in a test's time:
//
//	go run ./test/cluster/components [-dir test/cluster/components]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/node-local-coredns/node-local-coredns/test/cluster"
)

func main() {
	dir := flag.String("dir", "test/cluster/components", "the directory of the components' modules")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := cluster.Build(context.Background(), *dir, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "components:", err)
		os.Exit(1)
	}
	fmt.Printf("%s\n%s\n%s\n%s\n%s\n", c, c.APIServer, c.KubeProxy, c.Etcd, c.CoreDNS)
}
