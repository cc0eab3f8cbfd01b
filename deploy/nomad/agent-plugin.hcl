# Nomad client snippet: load the llorch task driver. Put the llorch binary
# in the agent's plugin_dir (file name "llorch"), then add this to the
# client's configuration. Every field is documented in docs/configuration.md.
plugin_dir = "/opt/nomad/plugins"

plugin "llorch" {
  config {
    # Where engines register; the token needs deploy/consul/driver-policy.hcl.
    consul {
      address      = "127.0.0.1:8500"
      token_file   = "/etc/llorch/consul-driver.token"
      service_name = "llorch-engine"
    }

    # Engine binaries on this node (the driver fingerprints which exist).
    engines {
      llamacpp = "/usr/local/bin/llama-server"
      ollama   = "/usr/local/bin/ollama"
      vllm     = "/usr/local/bin/vllm"
    }
    default_engine = "llamacpp"

    # The node's models: fingerprinted into driver.llorch.models.
    model_dir = "/opt/llorch/models"

    # The one engine API key the router presents (see docs/security.md).
    engine_token_file = "/etc/llorch/engine.token"

    fingerprint_period = "30s"
    require_gpu        = false
    gpu_sharing        = true
    vram_headroom_mib  = 512
  }
}
