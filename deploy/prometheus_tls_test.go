package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
	"github.com/llorch/llorch/registry"
)

// fleetTLS is one CA and the pairs it issued: the engine's and the
// router's (both for 127.0.0.1, where they are announced) and
// Prometheus's client pair (Consul verifies clients).
type fleetTLS struct {
	ca                   *tlstest.CA
	engine, router, prom tlstest.Files
}

func newFleetTLS(t *testing.T) *fleetTLS {
	ca := tlstest.NewCA(t, "fleet-ca")
	dir := t.TempDir()
	return &fleetTLS{ca: ca,
		engine: ca.WriteFiles(t, dir, "engine", "engine", "127.0.0.1"),
		router: ca.WriteFiles(t, dir, "router", "router", "127.0.0.1"),
		prom:   ca.WriteFiles(t, dir, "prometheus", "prometheus"),
	}
}

// client trusts the fleet's CA only.
func (tf *fleetTLS) client(t *testing.T) *http.Client {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(tf.ca.PEM) {
		t.Fatal("CA PEM")
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// fill replaces the shipped file's placeholders with the fleet's files;
// a placeholder left over fails the test.
func (f *fleet) fill(t *testing.T, file string, more ...string) string {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer(append([]string{
		"/etc/llorch/tls/ca.crt", f.tls.prom.CA, "/etc/llorch/tls/prometheus.crt", f.tls.prom.Cert, "/etc/llorch/tls/prometheus.key", f.tls.prom.Key,
		"/etc/llorch/consul-router.token", f.readTokFile, "/etc/llorch/engine.token", f.engTokFile, "/etc/llorch/api.token", f.apiTokFile,
		"scrape_interval: 15s", "scrape_interval: 1s", "refresh_interval: 15s", "refresh_interval: 1s"}, more...)...)
	cfg := r.Replace(string(raw))
	for _, p := range []string{"/etc/llorch/", "CONSUL_ADDR", "ROUTER_ADDR", "ROUTER_NODE_ID"} {
		if strings.Contains(cfg, p) {
			t.Fatalf("deploy/%s has a placeholder (%s) this test does not fill:\n%s", file, p, cfg)
		}
	}
	return cfg
}

// The fleet really is TLS-only: nothing of it answers plain HTTP, so a
// scrape that worked went over HTTPS.
func (f *fleet) requireNoPlaintext(t *testing.T, engineAddr string) {
	t.Helper()
	plain := &http.Client{Timeout: 5 * time.Second}
	for what, u := range map[string]string{"router": "http://" + f.routerAddr + "/metrics", "consul": "http://" + f.consul.Addr + "/v1/status/leader",
		"engine": "http://" + engineAddr + "/metrics"} {
		resp, err := plain.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatalf("%s answers plain HTTP (%s)", what, u)
			}
		}
	}
}

// scrapeURLs is every active target's scrape URL, by job.
func (p *promServer) scrapeURLs(t *testing.T) map[string][]string {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/targets", p.port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Active []struct {
				Labels    map[string]string `json:"labels"`
				ScrapeURL string            `json:"scrapeUrl"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, a := range r.Data.Active {
		out[a.Labels["job"]] = append(out[a.Labels["job"]], a.ScrapeURL)
	}
	return out
}

func requireHTTPS(t *testing.T, urls map[string][]string, jobs ...string) {
	t.Helper()
	for _, j := range jobs {
		if len(urls[j]) == 0 {
			t.Errorf("job %s has no targets", j)
		}
		for _, u := range urls[j] {
			if !strings.HasPrefix(u, "https://") {
				t.Errorf("job %s scrapes %s, not over HTTPS", j, u)
			}
		}
	}
}

// engineAddr is the engine's announced host:port, read back from Consul.
func (f *fleet) engineAddr(t *testing.T) string {
	e, _, err := f.consul.Client(t, f.consul.ManagementToken).Health().Service(registry.DefaultServiceName, "", true, nil)
	if err != nil || len(e) != 1 {
		t.Fatalf("engine in Consul: %d %v", len(e), err)
	}
	if e[0].Service.Meta[registry.MetaTLS] != "1" {
		t.Fatalf("engine announced without tls=1: %v", e[0].Service.Meta)
	}
	return net.JoinHostPort(e[0].Service.Address, strconv.Itoa(e[0].Service.Port))
}

// deploy/prometheus-tls.yml against a fleet with TLS on every hop:
// Consul SD over HTTPS (the agent verifies Prometheus's client
// certificate), the router and the engine scraped over HTTPS, verified
// against the fleet's CA.
func TestPrometheusTLSScrapesThroughConsulSD(t *testing.T) {
	f := startFleetWith(t, newFleetTLS(t))
	f.requireNoPlaintext(t, f.engineAddr(t))
	host, portS, _ := net.SplitHostPort(f.routerAddr)
	rport, _ := strconv.Atoi(portS)
	if err := f.consul.Client(t, f.consul.ManagementToken).Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: "llorch-router-ctl-1", Name: "llorch-router", Address: host, Port: rport,
		Meta: map[string]string{registry.MetaNodeID: "ctl-1"}}); err != nil {
		t.Fatal(err)
	}
	p := f.prom(t, f.fill(t, "prometheus-tls.yml", "CONSUL_ADDR", f.consul.Addr))
	p.expect(t, map[string]string{
		`up{job="llorch-engines",node_id="node-a",model="tiny",pool_id="pool-a",engine="llamacpp"} == 1`: "engine found through Consul over HTTPS, scraped over HTTPS",
		`{job="llorch-engines",node_id="node-a",__name__=~"llamacpp:.*"}`:                                "engine's own series",
		`up{job="llorch-router",node_id="ctl-1",consul_node="consul-test"} == 1`:                         "router found through Consul over HTTPS, scraped over HTTPS",
		`llorch_node_instances{job="llorch-router",node_id="node-a",state="passing"}`:                    "router's view (fed by Consul over HTTPS) keeps node_id",
	})
	requireHTTPS(t, p.scrapeURLs(t), "llorch-router", "llorch-engines")
}

// deploy/prometheus-http-sd-tls.yml: the router's HTTP SD and both
// scrapes over HTTPS.
func TestPrometheusTLSScrapesThroughRouterHTTPSD(t *testing.T) {
	f := startFleetWith(t, newFleetTLS(t))
	f.requireNoPlaintext(t, f.engineAddr(t))
	p := f.prom(t, f.fill(t, "prometheus-http-sd-tls.yml", "ROUTER_ADDR", f.routerAddr, "ROUTER_NODE_ID", "ctl-1"))
	p.expect(t, map[string]string{
		`up{job="llorch-engines",node_id="node-a",model="tiny",pool_id="pool-a"} == 1`: "engine from the router's HTTPS SD, scraped over HTTPS",
		`up{job="llorch-router",node_id="ctl-1"} == 1`:                                 "router scraped over HTTPS",
		`llorch_node_instances{node_id="node-a",state="passing"}`:                      "router's per-node series",
	})
	requireHTTPS(t, p.scrapeURLs(t), "llorch-router", "llorch-engines")
}

// The TLS forms leave no hop on plain HTTP: every job that scrapes the
// router or engines, and every Consul or HTTP SD, says https and carries a
// CA, and they discover the same services as the plain forms.
func TestTLSConfigShape(t *testing.T) {
	type tlsCfg struct {
		CAFile   string `yaml:"ca_file"`
		CertFile string `yaml:"cert_file"`
		KeyFile  string `yaml:"key_file"`
	}
	for _, file := range []string{"prometheus-tls.yml", "prometheus-http-sd-tls.yml"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			ScrapeConfigs []struct {
				JobName  string `yaml:"job_name"`
				Scheme   string `yaml:"scheme"`
				TLS      tlsCfg `yaml:"tls_config"`
				ConsulSD []struct {
					Scheme   string   `yaml:"scheme"`
					TLS      tlsCfg   `yaml:"tls_config"`
					Services []string `yaml:"services"`
				} `yaml:"consul_sd_configs"`
				HTTPSD []struct {
					URL string `yaml:"url"`
					TLS tlsCfg `yaml:"tls_config"`
				} `yaml:"http_sd_configs"`
			} `yaml:"scrape_configs"`
		}
		if err := yaml.Unmarshal(raw, &cfg); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		jobs := map[string]bool{}
		for _, sc := range cfg.ScrapeConfigs {
			jobs[sc.JobName] = true
			if sc.JobName != "llorch-drivers" && (sc.Scheme != "https" || sc.TLS.CAFile == "" || sc.TLS.CertFile == "" || sc.TLS.KeyFile == "") {
				t.Errorf("%s: job %s scrapes with scheme %q, tls_config %+v", file, sc.JobName, sc.Scheme, sc.TLS)
			}
			for _, sd := range sc.ConsulSD {
				if sd.Scheme != "https" || sd.TLS.CAFile == "" || sd.TLS.CertFile == "" {
					t.Errorf("%s: job %s reaches Consul with scheme %q, tls_config %+v", file, sc.JobName, sd.Scheme, sd.TLS)
				}
			}
			for _, sd := range sc.HTTPSD {
				if !strings.HasPrefix(sd.URL, "https://") || sd.TLS.CAFile == "" {
					t.Errorf("%s: job %s HTTP SD %s, tls_config %+v", file, sc.JobName, sd.URL, sd.TLS)
				}
			}
		}
		if !jobs["llorch-router"] || !jobs["llorch-engines"] {
			t.Errorf("%s: jobs %v", file, jobs)
		}
	}
}
