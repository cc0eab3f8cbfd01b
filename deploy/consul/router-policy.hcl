# ACL policy for the llorch router's Consul token: discover engine instances
# with their health. Health queries return each instance with its node, so the
# token needs read on the nodes too; without node read Consul filters the
# results out silently. Nothing here can write.
service "llorch-engine" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
