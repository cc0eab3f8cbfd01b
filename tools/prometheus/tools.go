//go:build tools

// Package tools pins the Prometheus version deploy/prometheus_test.go scrapes
// with (Debian's 2.42 has no Consul SD). It is a separate module so
// Prometheus's dependency graph never enters llorch's.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
