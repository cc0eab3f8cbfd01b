# Extra Consul ACL policy for a router that scales pools (--nomad-addr), on
# top of router-policy.hcl. Routers share their demand per pool and elect
# one decision-maker per pool through a session lock, all under one KV
# prefix: a session of their own (on the router's node), and write on
# llorch/scaler/ only.
session_prefix "" {
  policy = "write"
}
key_prefix "llorch/scaler/" {
  policy = "write"
}
