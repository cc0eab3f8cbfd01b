package driver_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/driver"
	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/testenv"
)

// With metrics_address set, the long-lived plugin serves /metrics with
// node_id-labelled task, engine and GPU series and registers it in Consul
// as llorch-driver; the names match docs/monitoring.md.
func TestDriverMetrics(t *testing.T) {
	e := newAnnounceEnv(t, consultest.DriverPolicy(t))
	port := testenv.FreePort(t)
	e.cfg["metrics_address"] = "127.0.0.1:" + strconv.Itoa(port)
	e.cfg["node_id"] = "node-m"
	e.cfg["advertise_address"] = "127.0.0.1"
	p := e.plugin(t)
	ctx, cancel := context.WithCancel(ctxT(t, 30*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	a := newAlloc(t)
	start(t, p, e.task(t, p, a))

	scrape := func() string {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	var body string
	eventually(t, 20*time.Second, "ready engine in /metrics", func() bool {
		body = scrape()
		return strings.Contains(body, `llorch_driver_engines{health="passing",node_id="node-m"} 1`) &&
			strings.Contains(body, `llorch_driver_engine_ready_seconds_count{engine="llamacpp",node_id="node-m"} 1`)
	})
	for _, want := range []string{`llorch_driver_tasks{node_id="node-m",state="running"} 1`, `llorch_gpus{node_id="node-m"} 0`,
		`llorch_engine_slots_free{model="tiny",node_id="node-m",pool_id="cpu-pool"}`} {
		eventually(t, 5*time.Second, want, func() bool { return strings.Contains(scrape(), want) })
	}
	eventually(t, 10*time.Second, "llorch-driver in Consul", func() bool {
		svcs, _, err := e.reader.Health().Service(driver.DriverServiceName, "", false, nil)
		return err == nil && len(svcs) == 1 && svcs[0].Service.Meta["node_id"] == "node-m" && svcs[0].Service.Port == port
	})

	// Every series the scrape shows is one MetricNames lists, and
	// docs/monitoring.md lists exactly MetricNames.
	known := map[string]bool{}
	for _, n := range driver.MetricNames() {
		known[n] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^# HELP (llorch_[a-z_]+)`).FindAllStringSubmatch(scrape(), -1) {
		if !known[m[1]] {
			t.Errorf("/metrics serves %s, which MetricNames does not list", m[1])
		}
	}
	doc, err := os.ReadFile("../docs/monitoring.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:llorch_driver_|llorch_engine_|llorch_gpu)[a-z_]*)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	for n := range known {
		if !documented[n] {
			t.Errorf("%s is exported but not in docs/monitoring.md", n)
		}
	}
	for n := range documented {
		if !known[n] {
			t.Errorf("%s is documented but not exported", n)
		}
	}
}

// On a node with GPUs (go-nvml's dgxh100 mock) the per-GPU series appear.
func TestDriverGPUMetrics(t *testing.T) {
	port := testenv.FreePort(t)
	p := launchGPU(t, "dgxh100:2", map[string]interface{}{"metrics_address": "127.0.0.1:" + strconv.Itoa(port), "node_id": "gpu-node"})
	ctx, cancel := context.WithCancel(ctxT(t, 20*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	want := []string{`llorch_gpus{node_id="gpu-node"} 2`, `llorch_gpu_memory_total_bytes{gpu="1",node_id="gpu-node"}`,
		`llorch_gpu_memory_free_bytes{gpu="0",node_id="gpu-node"}`, `llorch_gpu_memory_used_bytes{gpu="0",node_id="gpu-node"}`}
	eventually(t, 10*time.Second, "GPU series", func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				return false
			}
		}
		return true
	})
}
