plugin "llorch" {
  config {
    consul {
      address = "127.0.0.1:18500"
    }
    engines {
      llamacpp = "/tmp/nomadrun/opt/llama-server"
    }
    model_dir          = "/tmp/nomadrun/w/models"
    engine_token_file  = "/tmp/nomadrun/w/engine.token"
    fingerprint_period = "2s"
    default_user       = "nobody"
    denied_host_uids   = "0-999"
    denied_host_gids   = "0-999"
    vram_headroom_mib  = 256
  }
}
