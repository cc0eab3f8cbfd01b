# ACL policy for the llorch task driver's Consul token (the least that works;
# registry/consul's tests create the driver token from this very file).
#
# The driver registers one service per engine task on its node's local agent,
# with a TTL check it feeds, and deregisters it when the task ends. That takes
# write on the engine service name (and on llorch-driver for its own
# /metrics, below) and nothing else: no node write (the driver adds no node
# checks), no agent read, no key/value access.
#
# If you change the service name (consul { service = "..." } in the plugin
# config), change it here too.
service "llorch-engine" {
  policy = "write"
}

# The driver's own /metrics, registered for Prometheus's Consul discovery
# (only when the plugin config sets metrics_address).
service "llorch-driver" {
  policy = "write"
}
