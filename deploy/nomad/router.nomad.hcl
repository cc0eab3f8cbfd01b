# The llorch router as a Nomad job (one instance per region is enough; run
# two for availability behind your load balancer). It reads engines from
# Consul with a read-only token and serves the OpenAI-compatible and /v2
# APIs. Secrets come from files, never from arguments.
job "llorch-router" {
  datacenters = ["*"]
  type        = "service"

  group "router" {
    count = 2

    network {
      port "http" {
        static = 8080
      }
    }

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    service {
      name = "llorch-router"
      port = "http"
      meta {
        node_id = "${node.unique.id}"
      }
      check {
        type     = "http"
        protocol = "https" # the router serves TLS (below)
        # The check runs on the node: it reaches the router by IP, which
        # the certificate need not name.
        tls_skip_verify = true
        path     = "/healthz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "router" {
      driver = "exec"

      config {
        command = "/usr/local/bin/llorch"
        args    = ["router"]
      }

      env {
        LLORCH_ADDR              = "0.0.0.0:8080"
        # A non-loopback address needs TLS (or LLORCH_ALLOW_PLAINTEXT=true
        # behind a TLS-terminating proxy). The pair is re-read when it
        # changes; docs/security.md "TLS everywhere" renders it from Vault PKI.
        LLORCH_TLS_CERT_FILE     = "/etc/llorch/tls/router.crt"
        LLORCH_TLS_KEY_FILE      = "/etc/llorch/tls/router.key"
        LLORCH_API_TOKEN_FILE    = "/etc/llorch/api.token"
        LLORCH_ENGINE_TOKEN_FILE = "/etc/llorch/engine.token"
        CONSUL_HTTP_ADDR         = "127.0.0.1:8500"
        CONSUL_HTTP_TOKEN_FILE   = "/etc/llorch/consul-router.token"
      }

      resources {
        cpu    = 1000
        memory = 256
      }
    }
  }
}
