package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	consulapi "github.com/hashicorp/consul/api"
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

// fleet is one engine announced the way the driver does it and a router fed
// by Consul, both with their tokens in files, for Prometheus to find.
type fleet struct {
	consul                              *testenv.Consul
	dir                                 string
	routerAddr                          string
	readTokFile, engTokFile, apiTokFile string
	tls                                 *fleetTLS // nil: plain HTTP everywhere
}

func startFleet(t *testing.T) *fleet { return startFleetWith(t, nil) }

// startFleetWith starts the fleet; with tf, every hop is TLS: Consul
// serves HTTPS only (verifying clients), the engine serves HTTPS and is
// announced tls=1, the router listens on HTTPS.
func startFleetWith(t *testing.T, tf *fleetTLS) *fleet {
	llama := testenv.LlamaServer(t)
	var c *testenv.Consul
	if tf != nil {
		c = testenv.StartConsulTLS(t, testenv.ConsulTLS{CA: tf.ca, VerifyIncoming: true})
	} else {
		c = testenv.StartConsul(t)
	}
	dir := t.TempDir()
	engineToken := "engine-token-0123456789abcdef0123456789"
	apiToken := "api-token-0123456789abcdef0123456789abcd"
	f := &fleet{consul: c, dir: dir, tls: tf,
		readTokFile: writeSecret(t, dir, "consul-router.token", c.Token(t, consultest.RouterPolicy(t))),
		engTokFile:  writeSecret(t, dir, "engine.token", engineToken),
		apiTokFile:  writeSecret(t, dir, "api.token", apiToken),
	}
	driverTok := c.Token(t, consultest.DriverPolicy(t))

	// An engine, announced the way the driver does it.
	ad, _ := engine.Get("llamacpp")
	port := testenv.FreePort(t)
	spec := engine.Spec{Model: ggufgen.TestModel(t, ggufgen.DefaultOptions()), ModelName: "tiny", Host: "127.0.0.1", Port: port, Slots: 1, APIKey: engineToken}
	inst := registry.Instance{ID: "engine-a", Service: registry.DefaultServiceName, Address: "127.0.0.1", Port: port, Model: "tiny",
		Engine: "llamacpp", NodeID: "node-a", PoolID: "pool-a", Slots: 1}
	scfg := supervise.Config{Adapter: ad, Instance: inst}
	var consulTLS consul.TLS
	if tf != nil {
		spec.TLSCertFile, spec.TLSKeyFile = tf.engine.Cert, tf.engine.Key
		scfg.Instance.TLS = true
		scfg.Base, scfg.Client = "https://127.0.0.1:"+strconv.Itoa(port), tf.client(t)
		consulTLS = consul.TLS{CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile}
	}
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
	reg, err := consul.NewRegistrar(consul.RegistrarConfig{Address: c.Addr, Token: driverTok, TLS: consulTLS})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	scfg.Spec, scfg.Registrar = spec, reg
	sup := supervise.New(scfg)
	go sup.Run(ctx)
	select {
	case <-sup.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("engine not ready: %v", sup.Err())
	}

	// The router, fed by Consul.
	cc := c.Client(t, strings.TrimSpace(mustRead(t, f.readTokFile)))
	rcfg := router.DefaultConfig()
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.routerAddr = rl.Addr().String()
	rcfg.Addr = f.routerAddr
	rcfg.APITokenFile, rcfg.EngineTokenFile = f.apiTokFile, f.engTokFile
	if tf != nil {
		rcfg.TLSCertFile, rcfg.TLSKeyFile, rcfg.EngineCAFile = tf.router.Cert, tf.router.Key, tf.router.CA
	}
	rt, err := router.New(rcfg, &consul.Watcher{Client: cc}, nil, hclog.NewNullLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(ctx)
	srv := rt.HTTPServer()
	go rt.Serve(srv, rl)
	t.Cleanup(func() { srv.Close() })
	return f
}

// prom runs Prometheus on cfg until the test ends and returns its port.
func (f *fleet) prom(t *testing.T, cfg string) *promServer {
	bin := testenv.Prometheus(t)
	cf := writeSecret(t, f.dir, "prometheus.yml", cfg)
	p := &promServer{port: testenv.FreePort(t)}
	cmd := exec.Command(bin, "--config.file="+cf, "--storage.tsdb.path="+filepath.Join(f.dir, "tsdb"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(p.port))
	cmd.Stdout, cmd.Stderr = &p.log, &p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	return p
}

type promServer struct {
	port int
	log  strings.Builder // written by the process until it is killed; read only on failure
}

func (p *promServer) query(q string) []map[string]string {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/query?query=%s", p.port, url.QueryEscape(q)))
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

// expect waits until every query has a series. The wait is derived from
// the 1 s scrape and refresh intervals the tests configure: a few rounds
// of discovery and scraping, with the margin of a loaded CI machine.
func (p *promServer) expect(t *testing.T, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for q, what := range want {
		for len(p.query(q)) == 0 {
			if time.Now().After(deadline) {
				var tb []byte
				if targets, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/targets", p.port)); err == nil {
					tb, _ = io.ReadAll(io.LimitReader(targets.Body, 4000))
					targets.Body.Close()
				}
				t.Fatalf("%s: no series for %s\ntargets: %s\nprometheus log:\n%s", what, q, tb, tail(p.log.String()))
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("ok: %s (%s)", what, q)
	}
}

// Prometheus with the shipped deploy/prometheus.yml finds the router and
// the engines through Consul's service discovery, with the ACL token of
// deploy/consul/router-policy.hcl, scrapes both with their bearer tokens,
// and labels every series node_id from the registration's meta.
func TestPrometheusScrapesThroughConsulSD(t *testing.T) {
	f := startFleet(t)
	// The router registered as llorch-router with its node_id meta, as the
	// Nomad job's service block does in production.
	host, portS, _ := net.SplitHostPort(f.routerAddr)
	rport, _ := strconv.Atoi(portS)
	if err := f.consul.Client(t, f.consul.ManagementToken).Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: "llorch-router-ctl-1", Name: "llorch-router", Address: host, Port: rport,
		Meta: map[string]string{registry.MetaNodeID: "ctl-1"}}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("CONSUL_ADDR", f.consul.Addr,
		"/etc/llorch/consul-router.token", f.readTokFile, "/etc/llorch/engine.token", f.engTokFile, "/etc/llorch/api.token", f.apiTokFile,
		"scrape_interval: 15s", "scrape_interval: 1s").Replace(string(raw))
	if strings.Contains(cfg, "/etc/llorch/") || strings.Contains(cfg, "CONSUL_ADDR") {
		t.Fatalf("deploy/prometheus.yml has placeholders this test does not fill:\n%s", cfg)
	}
	p := f.prom(t, cfg)
	p.expect(t, map[string]string{
		`up{job="llorch-engines",node_id="node-a",model="tiny",pool_id="pool-a",engine="llamacpp"} == 1`: "engine found in Consul, scraped with the engine token, labelled from its meta",
		`{job="llorch-engines",node_id="node-a",__name__=~"llamacpp:.*"}`:                                "engine's own series with node_id",
		`up{job="llorch-router",node_id="ctl-1"} == 1`:                                                   "router found in Consul, scraped with the API token, node_id from its meta",
		`llorch_node_instances{job="llorch-router",node_id="node-a",state="passing"}`:                    "router's per-node series keep the engine's node_id (honor_labels)",
	})
	// Discovery went through Consul: the router's target carries the
	// Consul node name (testenv's agent is "consul-test").
	p.expect(t, map[string]string{`up{job="llorch-router",consul_node="consul-test"} == 1`: "router target labelled with its Consul node"})
}

// The same through the router's HTTP SD (deploy/prometheus-http-sd.yml),
// for Prometheus builds without Consul SD: the router, fed by Consul,
// serves the engines as targets.
func TestPrometheusScrapesThroughRouterHTTPSD(t *testing.T) {
	f := startFleet(t)
	raw, err := os.ReadFile("prometheus-http-sd.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("ROUTER_ADDR", f.routerAddr, "ROUTER_NODE_ID", "ctl-1",
		"/etc/llorch/engine.token", f.engTokFile, "/etc/llorch/api.token", f.apiTokFile,
		"scrape_interval: 15s", "scrape_interval: 1s", "refresh_interval: 15s", "refresh_interval: 1s").Replace(string(raw))
	p := f.prom(t, cfg)
	p.expect(t, map[string]string{
		`up{job="llorch-engines",node_id="node-a",model="tiny",pool_id="pool-a"} == 1`: "engine scraped, labelled from Consul meta",
		`{job="llorch-engines",node_id="node-a",__name__=~"llamacpp:.*"}`:              "engine's own series with node_id",
		`up{job="llorch-router",node_id="ctl-1"} == 1`:                                 "router scraped with its node_id",
		`llorch_node_instances{node_id="node-a",state="passing"}`:                      "router's per-node series keep the engine's node_id",
	})
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

// deploy/prometheus.yml (and its TLS form) finds both services in Consul
// and maps the meta to the same labels as the HTTP SD file (checked without a Prometheus; the
// scrape test above runs it).
func TestConsulSDConfigShape(t *testing.T) {
	for _, f := range []string{"prometheus.yml", "prometheus-tls.yml"} {
		t.Run(f, func(t *testing.T) { consulSDConfigShape(t, f) })
	}
}

func consulSDConfigShape(t *testing.T, file string) {
	raw, err := os.ReadFile(file)
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
