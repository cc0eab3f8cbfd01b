# Nomad ACL policy for the llorch router's Nomad token (--nomad-token-file),
# used only when the router scales pools (--nomad-addr). The router lists
# the jobs in the namespace to find pools with llorch meta (list-jobs: the
# job list endpoint needs it), reads their counts (read-job) and changes a
# pool's count within its range (scale-job). Nothing else: it cannot submit,
# stop or change a job's spec, read allocations' logs or touch other
# namespaces. Create it with:
#   nomad acl policy apply -description "llorch router scaling" llorch-router-scaler router-scaler-policy.hcl
#   nomad acl token create -name llorch-router -policy llorch-router-scaler
namespace "default" {
  capabilities = ["list-jobs", "read-job", "scale-job"]
}
