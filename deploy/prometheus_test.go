package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/supervise"
	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
	"github.com/llorch/llorch/router"
)

func writeSecret(t *testing.T, dir, name, v string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A stock Prometheus with deploy/prometheus.yml finds the router and the
// engines through Consul (ACLs on) and their series arrive labelled node_id.
func TestPrometheusFindsLlorchThroughConsul(t *testing.T) {
	promBin := testenv.LookPath(t, "prometheus", "apt-get install prometheus")
	llama := testenv.LlamaServer(t)
	c := testenv.StartConsul(t)
	dir := t.TempDir()
	engineToken := "engine-token-0123456789abcdef0123456789"
	apiToken := "api-token-0123456789abcdef0123456789abcd"
	readTok := writeSecret(t, dir, "consul-router.token", c.Token(t, consultest.RouterPolicy(t)))
	driverTok := c.Token(t, consultest.DriverPolicy(t))
	engTokFile := writeSecret(t, dir, "engine.token", engineToken)
	apiTokFile := writeSecret(t, dir, "api.token", apiToken)

	// An engine, announced the way the driver does it.
	ad, _ := engine.Get("llamacpp")
	port := testenv.FreePort(t)
	spec := engine.Spec{Model: ggufgen.TestModel(t, ggufgen.DefaultOptions()), ModelName: "tiny", Host: "127.0.0.1", Port: port, Slots: 1, APIKey: engineToken}
	cmdSpec, err := ad.Command(llama, spec)
	if err != nil {
		t.Fatal(err)
	}
	eng := exec.Command(cmdSpec.Path, cmdSpec.Args...)
	eng.Env = append(os.Environ(), cmdSpec.Env...)
	eng.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := eng.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-eng.Process.Pid, syscall.SIGKILL); eng.Wait() })
	reg, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: driverTok})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sup := supervise.New(supervise.Config{Adapter: ad, Spec: spec, Registrar: reg, Instance: registry.Instance{
		ID: "engine-a", Service: registry.DefaultServiceName, Address: "127.0.0.1", Port: port, Model: "tiny",
		Engine: "llamacpp", NodeID: "node-a", PoolID: "pool-a", Slots: 1}})
	go sup.Run(ctx)
	select {
	case <-sup.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("engine not ready: %v", sup.Err())
	}

	// The router, fed by Consul, registered as llorch-router (the Nomad
	// job's service block does this in production).
	cc := c.Client(t, strings.TrimSpace(mustRead(t, readTok)))
	rcfg := router.DefaultConfig()
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rcfg.Addr = rl.Addr().String()
	rcfg.APITokenFile, rcfg.EngineTokenFile = apiTokFile, engTokFile
	rt, err := router.New(rcfg, &consul.Watcher{Client: cc}, nil, hclog.NewNullLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(ctx)
	srv := &http.Server{Handler: rt.Handler()}
	go srv.Serve(rl)
	t.Cleanup(func() { srv.Close() })
	// deploy/prometheus-http-sd.yml with this test's addresses and files:
	// Debian's Prometheus has no Consul SD, so the router (fed by Consul)
	// serves the engines as HTTP SD.
	raw, err := os.ReadFile("prometheus-http-sd.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("ROUTER_ADDR", rl.Addr().String(), "ROUTER_NODE_ID", "ctl-1",
		"/etc/llorch/engine.token", engTokFile, "/etc/llorch/api.token", apiTokFile,
		"scrape_interval: 15s", "scrape_interval: 1s", "refresh_interval: 15s", "refresh_interval: 1s").Replace(string(raw))
	cf := writeSecret(t, dir, "prometheus.yml", cfg)
	pport := testenv.FreePort(t)
	prom := exec.Command(promBin, "--config.file="+cf, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(pport))
	var plog strings.Builder
	prom.Stdout, prom.Stderr = &plog, &plog
	prom.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-prom.Process.Pid, syscall.SIGKILL); prom.Wait() })

	query := func(q string) []map[string]string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", pport, url.QueryEscape(q)))
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
				} `json:"result"`
			} `json:"data"`
		}
		json.NewDecoder(resp.Body).Decode(&r)
		var out []map[string]string
		for _, x := range r.Data.Result {
			out = append(out, x.Metric)
		}
		return out
	}
	want := map[string]string{
		`up{job="llorch-engines",node_id="node-a",model="tiny",pool_id="pool-a"} == 1`: "engine scraped, labelled from Consul meta",
		`{job="llorch-engines",node_id="node-a",__name__=~"llamacpp:.*"}`:              "engine's own series with node_id",
		`up{job="llorch-router",node_id="ctl-1"} == 1`:                                 "router scraped with its node_id",
		`llorch_node_instances{node_id="node-a",state="passing"}`:                      "router's per-node series keep the engine's node_id",
	}
	deadline := time.Now().Add(40 * time.Second)
	for q, what := range want {
		for len(query(q)) == 0 {
			if time.Now().After(deadline) {
				targets, _ := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/targets", pport))
				var tb strings.Builder
				if targets != nil {
					b := make([]byte, 4000)
					n, _ := targets.Body.Read(b)
					tb.Write(b[:n])
				}
				t.Fatalf("%s: no series for %s\ntargets: %s\nprometheus log:\n%s", what, q, tb.String(), tail(plog.String()))
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("ok: %s (%s)", what, q)
	}
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}

// deploy/prometheus.yml (for Prometheus builds with Consul SD) finds both
// services in Consul and maps the meta to the same labels as the HTTP SD
// file; Debian's Prometheus cannot load it, so its shape is checked here.
func TestConsulSDConfigShape(t *testing.T) {
	raw, err := os.ReadFile("prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName  string `yaml:"job_name"`
			ConsulSD []struct {
				Server   string   `yaml:"server"`
				Services []string `yaml:"services"`
			} `yaml:"consul_sd_configs"`
			Relabel []struct {
				Source []string `yaml:"source_labels"`
				Target string   `yaml:"target_label"`
			} `yaml:"relabel_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	services := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		nodeID := false
		for _, r := range sc.Relabel {
			if r.Target == "node_id" && len(r.Source) == 1 && r.Source[0] == "__meta_consul_service_metadata_"+registry.MetaNodeID {
				nodeID = true
			}
		}
		if !nodeID {
			t.Errorf("job %s does not label node_id from the Consul meta %q", sc.JobName, registry.MetaNodeID)
		}
		for _, sd := range sc.ConsulSD {
			for _, s := range sd.Services {
				services[s] = true
			}
		}
	}
	if !services[registry.DefaultServiceName] || !services["llorch-router"] {
		t.Errorf("services discovered: %v", services)
	}
}
