job "h-root" {
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
      user = "root"
      config {
        engine     = "llamacpp"
        model      = "/tmp/nomadrun/w/models/tiny.gguf"
        model_name = "tiny"
        port       = "http"
        ctx        = 512
        slots      = 1
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
