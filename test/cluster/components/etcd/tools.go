//go:build tools

// Package etcd lists the etcd command the cluster tests build.
package etcd

import _ "go.etcd.io/etcd/server/v3"
