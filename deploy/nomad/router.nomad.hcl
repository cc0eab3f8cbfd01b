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
