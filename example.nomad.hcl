# An engine pool: llama.cpp's llama-server serving the generated tiny model,
# run by the llorch task driver. Stage the model on the node first:
#
#   llorch gen-model -o /opt/llorch/models/tiny.gguf
#
# and load the plugin on the client (deploy/nomad/agent-plugin.hcl). Then:
#
#   nomad job run example.nomad.hcl
#
# The driver registers the engine in Consul as service "llorch-engine" once
# it answers, so this job declares no service block of its own.
job "tiny-pool" {
  datacenters = ["*"]
  type        = "service"

  group "engine" {
    count = 1

    network {
      port "http" {}
    }

    # Only nodes where the llorch driver runs and holds the model.
    constraint {
      attribute = "${attr.driver.llorch}"
      value     = "1"
    }
    constraint {
      attribute = "${attr.driver.llorch.models}"
      operator  = "set_contains"
      value     = "tiny"
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "llamacpp" {
      driver = "llorch"

      config {
        engine     = "llamacpp"
        model      = "/opt/llorch/models/tiny.gguf"
        model_name = "tiny"
        port       = "http"
        ctx        = 2048
        slots      = 2
        pool       = "tiny-pool"
      }

      kill_timeout = "30s"

      resources {
        cpu    = 1000
        memory = 512
      }
    }
  }
}
