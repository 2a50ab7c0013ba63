// Package deploy holds the Kubernetes manifests of node-local-coredns: the
// Helm chart (helm/node-local-coredns), the kustomize base (kustomize/) and
// the pre-rendered node-local-coredns.yaml, which its tests keep in
// agreement.
package deploy
