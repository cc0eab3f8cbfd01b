# ACL policy for the llorch router's Consul token: discover engine instances
# with their health. Health queries return each instance with its node, so the
# token needs read on the nodes too; without node read Consul filters the
# results out silently. It also reads the per-team API keys and counts the
# live routers (service llorch-router) that share each key's limits. Nothing
# here can write.
#
# Prometheus's Consul discovery (deploy/prometheus.yml) can use a token of
# this policy too: it also reads the router and driver services.
service "llorch-engine" {
  policy = "read"
}
service "llorch-router" {
  policy = "read"
}
service "llorch-driver" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
# Per-team API keys under a KV prefix (LLORCH_KEYS_CONSUL_PREFIX; match the
# prefix you configure). Read only: `llorch key new --consul-prefix` needs an
# operator token with write on it.
key_prefix "llorch/keys/" {
  policy = "read"
}
