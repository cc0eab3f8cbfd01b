package e2e

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

// consulHTTPSPort is the agents' API port in the TLS variant; their plain
// HTTP port (8500) is off there (ports { http = -1 }).
const consulHTTPSPort = 8501

// clusterTLS is the TLS variant's one CA and the pairs it issued, with
// the names each hop verifies: the router's listener for the address
// clients use, every Consul agent for its host address and loopback (the
// router and drivers reach their local agent on 127.0.0.1), engines for
// the address their driver announces.
type clusterTLS struct {
	ca  *tlstest.CA
	dir string
	// consulClient is presented to the agents (tls verify_incoming) by the
	// test itself; the router and drivers have pairs of their own.
	consulClient, routerListen, routerToEngines, routerToConsul, driverToConsul tlstest.Files
	agents                                                                      map[string]tlstest.Files // host → its agent's pair
	gossipKey                                                                   string
}

func newClusterTLS(c *cluster) *clusterTLS {
	t := c.t
	ca := tlstest.NewCA(t, "llorch-e2e-ca")
	dir := filepath.Join(c.dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	x := &clusterTLS{ca: ca, dir: dir, agents: map[string]tlstest.Files{}, gossipKey: base64.StdEncoding.EncodeToString(key),
		consulClient:    ca.WriteFiles(t, dir, "test-consul", "e2e-test"),
		routerListen:    ca.WriteFiles(t, dir, "router", "llorch-router", subnet+"1"),
		routerToEngines: ca.WriteFiles(t, dir, "router-engines", "llorch-router"),
		routerToConsul:  ca.WriteFiles(t, dir, "router-consul", "llorch-router"),
		driverToConsul:  ca.WriteFiles(t, dir, "driver-consul", "llorch-driver"),
	}
	for h, ip := range c.f.hosts {
		// server.dc1.consul: client agents verify the server's RPC name
		// (verify_server_hostname).
		role := "client.dc1.consul"
		if h == "ctl" {
			role = "server.dc1.consul"
		}
		x.agents[h] = ca.WriteFiles(t, dir, "consul-"+h, "consul-"+h, role, "localhost", "127.0.0.1", ip)
	}
	return x
}

// consulHCL is an agent's TLS config: HTTPS only, every API client and
// every RPC peer must present a certificate of the CA, the server's RPC
// name is verified, and gossip is encrypted.
func (x *clusterTLS) consulHCL(host string) string {
	f := x.agents[host]
	return fmt.Sprintf(`ports { dns = -1, grpc = -1, grpc_tls = -1, http = -1, https = %d }
tls {
  defaults {
    ca_file         = %q
    cert_file       = %q
    key_file        = %q
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc { verify_server_hostname = true }
}
encrypt = %q
`, consulHTTPSPort, f.CA, f.Cert, f.Key, x.gossipKey)
}

// clientConfig trusts the CA only and presents pair (when set).
func (x *clusterTLS) clientConfig(pair *tlstest.Files) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(x.ca.PEM)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if pair != nil {
		if p, err := tls.LoadX509KeyPair(pair.Cert, pair.Key); err == nil {
			cfg.Certificates = []tls.Certificate{p}
		}
	}
	return cfg
}

// taskPair writes an engine's pair into its task's secrets/ (where a
// Nomad template would render it) and returns the task-relative paths.
func (x *clusterTLS) taskPair(c *cluster, tk *task) (cert, key string) {
	ip := c.f.hosts[tk.host]
	crt, k := x.ca.Issue(c.t, "engine-"+tk.host, ip)
	for name, b := range map[string][]byte{"tls.crt": crt, "tls.key": k} {
		if err := os.WriteFile(filepath.Join(tk.dir, "engine", "secrets", name), b, 0o600); err != nil {
			c.t.Fatal(err)
		}
	}
	return "secrets/tls.crt", "secrets/tls.key"
}

// privateKeys are the bodies of the run's private keys, for the leak scan.
func (x *clusterTLS) privateKeys() []string {
	var out []string
	for _, f := range []tlstest.Files{x.routerListen, x.routerToEngines, x.routerToConsul, x.driverToConsul} {
		b, _ := os.ReadFile(f.Key)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 2 {
			out = append(out, lines[1]) // the first base64 line: unique per key
		}
	}
	return out
}

// plaintextRefusals is every way the TLS variant could have been reached
// in the clear, each answered with the reason it is not: "" when a hop
// answered plain HTTP (the test then fails).
func (c *cluster) plaintextRefusals(engineAddrs []string) map[string]string {
	out := map[string]string{}
	plain := &http.Client{Timeout: 5 * time.Second}
	try := func(what, url string) {
		resp, err := plain.Get(url)
		switch {
		case err != nil:
			out[what] = "error: " + err.Error()
		case resp.StatusCode == http.StatusBadRequest:
			resp.Body.Close()
			out[what] = "HTTP 400 (HTTPS port)"
		default:
			resp.Body.Close()
			out[what] = ""
		}
	}
	try("router http://", "http://"+subnet+"1:8080/healthz")
	for _, a := range engineAddrs {
		try("engine http://"+a, "http://"+a+"/health")
	}
	for h, ip := range c.f.hosts {
		// No plain HTTP listener at all on any agent: the connection is
		// refused (a port that answered would be a silent fallback).
		conn, err := net.DialTimeout("tcp", ip+":8500", 3*time.Second)
		if err == nil {
			conn.Close()
			out["consul "+h+" :8500"] = ""
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			out["consul "+h+" :8500"] = "refused"
		} else {
			out["consul "+h+" :8500"] = "error: " + err.Error()
		}
	}
	return out
}

// engineStatus posts a chat straight to an engine, without the engine
// token, and returns the status it answers.
func (c *cluster) engineStatus(url string) (int, error) {
	resp, err := c.http.Post(url, "application/json", strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
