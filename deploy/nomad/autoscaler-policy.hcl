# Example for teams that prefer the Nomad Autoscaler to the router's own
# scaling (then leave the router's --nomad-addr unset, so only one of them
# scales). Put this scaling block in the pool's task group (replacing the
# disabled one `llorch jobs render -max N` writes) and point the Autoscaler
# at the Prometheus that scrapes the router and the drivers (deploy/prometheus.yml).
#
# Inputs, all exported by llorch (docs/monitoring.md):
#   llorch_engine_slots_busy / llorch_engine_slots_free {pool_id}  busy slots per pool (drivers)
#   llorch_engine_queue_length {pool_id}                            requests waiting inside the engines
#   llorch_router_queue_depth {priority}                            requests waiting in the routers' admission queues
#   llorch_router_in_flight_requests                                requests the routers are proxying
#
# The Autoscaler's target-value strategy multiplies the current count, so it
# cannot wake a pool at zero (0 × anything is 0): keep min = 1 with it, or
# let the router wake pools (it waits the request in the queue meanwhile).
scaling {
  enabled = true
  min     = 1
  max     = 4

  policy {
    evaluation_interval = "15s"
    cooldown            = "1m"

    # Busy slots per replica: aim for 80 % of the pool's slots busy.
    check "busy_slots" {
      source = "prometheus"
      query  = "sum(llorch_engine_slots_busy{pool_id=\"tiny\"}) / clamp_min(sum(llorch_engine_slots_busy{pool_id=\"tiny\"}) + sum(llorch_engine_slots_free{pool_id=\"tiny\"}), 1)"

      strategy "target-value" {
        target = 0.8
      }
    }

    # Queueing: requests waiting in the routers and the engines, per replica.
    check "queue" {
      source = "prometheus"
      query  = "(sum(llorch_router_queue_depth) + sum(llorch_engine_queue_length{pool_id=\"tiny\"})) / clamp_min(count(llorch_engine_slots_free{pool_id=\"tiny\"}), 1)"

      strategy "target-value" {
        target = 1
      }
    }
  }
}
