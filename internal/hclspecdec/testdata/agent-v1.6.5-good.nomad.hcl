job "good" {
  datacenters = ["*"]
  type        = "service"
  group "engine" {
    count = 1
    network {
      port "http" {}
    }
    restart {
      attempts = 0
      mode     = "fail"
    }
    reschedule {
      attempts  = 0
      unlimited = false
    }
    task "llamacpp" {
      driver = "llorch"
      user = "nobody"
      config {
        engine     = "llamacpp"
        model      = "/tmp/nomadrun/w/models/tiny.gguf"
        model_name = "tiny"
        port       = "http"
        ctx        = 512
        slots      = 1
        threads    = 1
        gpus       = 0
        extra_args = ["--temp", "0.5"]
        pool       = "good-pool"
        env {
          LLORCH_NOTE = "hello"
        }
        service {
          name = "llorch-engine"
          tags = ["team-a", "canary"]
        }
      }
      kill_timeout = "10s"
      resources {
        cpu = 500
        memory = 256
        memory_max = 512
      }
    }
  }
}
