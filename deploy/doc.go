// Package deploy holds the files operators copy (Nomad jobs, Consul ACL
// policies, the Prometheus configuration, the Grafana dashboard) and the
// tests that prove them against the real programs.
package deploy
