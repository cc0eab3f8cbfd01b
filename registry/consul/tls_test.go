package consul

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
	"github.com/llorch/llorch/registry"
)

// fakeHTTPSAgent answers every Consul API call with 200 over TLS and
// requires a client certificate signed by ca (verify_incoming); it counts
// the requests that got through.
func fakeHTTPSAgent(t *testing.T, ca *tlstest.CA) (addr string, served *atomic.Int64) {
	t.Helper()
	served = &atomic.Int64{}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		switch r.URL.Path {
		case "/v1/status/leader":
			_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
		case "/v1/agent/checks":
			_, _ = w.Write([]byte(`{}`))
		}
	}))
	c, k := ca.Issue(t, "server.dc1.consul", "127.0.0.1")
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return strings.TrimPrefix(hs.URL, "https://"), served
}

func clearConsulEnv(t *testing.T) {
	for _, k := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME", "CONSUL_HTTP_SSL_VERIFY"} {
		t.Setenv(k, "")
	}
}

// The registrar reaches an HTTPS-only agent that verifies clients, with
// the files from its config or from the CONSUL_* environment, and does
// not without the CA or without the client certificate.
func TestRegistrarOverTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "consul-ca")
	f := ca.WriteFiles(t, t.TempDir(), "client", "llorch-driver")
	addr, served := fakeHTTPSAgent(t, ca)
	inst := registry.Instance{ID: "i1", Address: "127.0.0.1", Port: 9, Model: "m", Engine: "llamacpp", NodeID: "n1"}
	register := func(cfg RegistrarConfig) error {
		cfg.Address, cfg.Token = addr, "t"
		r, err := NewRegistrar(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return r.Register(ctx, inst)
	}

	clearConsulEnv(t)
	if err := register(RegistrarConfig{TLS: TLS{CAFile: f.CA, CertFile: f.Cert, KeyFile: f.Key}}); err != nil || served.Load() == 0 {
		t.Fatalf("register with CA and client certificate: %v (agent served %d)", err, served.Load())
	}
	n := served.Load()
	if err := register(RegistrarConfig{TLS: TLS{CertFile: f.Cert, KeyFile: f.Key}}); err == nil {
		t.Error("registered without the CA: the agent's certificate was not verified")
	}
	if err := register(RegistrarConfig{TLS: TLS{CAFile: f.CA}}); err == nil || served.Load() != n {
		t.Errorf("registered without a client certificate: %v", err)
	}

	// The environment alone (a Nomad task's CONSUL_* variables).
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", f.CA)
	t.Setenv("CONSUL_CLIENT_CERT", f.Cert)
	t.Setenv("CONSUL_CLIENT_KEY", f.Key)
	if err := register(RegistrarConfig{}); err != nil || served.Load() == n {
		t.Fatalf("register with CONSUL_* TLS variables only: %v", err)
	}

	// The router's way (cli/router.go): no timeout, the same TLS.
	clearConsulEnv(t)
	cc := consulapi.DefaultConfig()
	cc.Address = addr
	if err := (TLS{CAFile: f.CA, CertFile: f.Cert, KeyFile: f.Key}).Apply(cc, 0); err != nil {
		t.Fatal(err)
	}
	cl, err := consulapi.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	if leader, err := cl.Status().Leader(); err != nil || leader == "" {
		t.Fatalf("router-style client over TLS: %q %v", leader, err)
	}
}
