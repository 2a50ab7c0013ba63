//go:build tools

// Package kubernetes lists the Kubernetes commands the cluster tests build.
package kubernetes

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
