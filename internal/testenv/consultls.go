package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

// ConsulTLS is how StartConsulTLS serves the agent's API.
type ConsulTLS struct {
	// CA signs the agent's certificate (for 127.0.0.1 and localhost) and
	// the client certificate in ConsulTLSFiles.
	CA *tlstest.CA
	// VerifyIncoming makes the HTTPS API demand a client certificate
	// signed by CA (Consul's tls.https.verify_incoming).
	VerifyIncoming bool
}

// ConsulTLSFiles are the PEM files a client of a TLS agent uses: the CA
// the agent's certificate verifies against and a client pair signed by it.
type ConsulTLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// StartConsulTLS starts a dev agent like StartConsul (ACLs on, default
// deny) whose API is served over HTTPS only (ports { http = -1 }) with a
// certificate from o.CA; Addr is the HTTPS port.
func StartConsulTLS(t testing.TB, o ConsulTLS) *Consul {
	t.Helper()
	if o.CA == nil {
		t.Fatal("StartConsulTLS: no CA")
	}
	c := newConsul(t)
	srv := o.CA.WriteFiles(t, c.dir, "agent", "consul-agent", "127.0.0.1", "localhost", "server.dc1.consul")
	cli := o.CA.WriteFiles(t, c.dir, "client", "consul-client")
	c.TLS = &ConsulTLSFiles{CAFile: cli.CA, CertFile: cli.Cert, KeyFile: cli.Key}
	// Certificates for every listener; client verification on the HTTPS
	// API only (the dev agent's own RPC stays as it is).
	cfg := fmt.Sprintf(`tls {
  defaults {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }
  https {
    verify_incoming = %t
  }
}
`, srv.CA, srv.Cert, srv.Key, o.VerifyIncoming)
	f := filepath.Join(c.dir, "tls.hcl")
	if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.configs = []string{f}
	probe, err := c.TLS.httpClient()
	if err != nil {
		t.Fatal(err)
	}
	c.probe, c.probeURL = probe, "https://"+c.Addr
	c.start(t)
	return c
}

// URL is the agent's API base URL (http:// or https://).
func (c *Consul) URL() string { return c.probeURL }

// httpClient verifies the agent against the CA and presents the client
// pair, for the readiness probe.
func (f *ConsulTLSFiles) httpClient() (*http.Client, error) {
	ca, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s", f.CAFile)
	}
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}}}, nil
}
