package testenv

import (
	"net/http"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

// The agent really enforces ACLs: a token may write only what its policy names.
func TestConsulACLDefaultDeny(t *testing.T) {
	c := StartConsul(t)
	reg := &consul.AgentServiceRegistration{ID: "x1", Name: "x", Port: 1}
	if err := c.Client(t, "").Agent().ServiceRegister(reg); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("anonymous register: want permission denied, got %v", err)
	}
	if err := c.Client(t, c.Token(t, `service "x" { policy = "write" }`)).Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register with write token: %v", err)
	}
	err := c.Client(t, c.Token(t, `service "other" { policy = "write" }`)).Agent().ServiceRegister(reg)
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("register with another service's token: want permission denied, got %v", err)
	}
}

// StartConsulTLS really serves HTTPS only, with ACLs still enforced: the
// port answers no plain HTTP, and a client without the CA is refused.
func TestConsulTLSOnly(t *testing.T) {
	c := StartConsulTLS(t, ConsulTLS{CA: tlstest.NewCA(t, "consul-ca"), VerifyIncoming: true})
	if c.TLS == nil || !strings.HasPrefix(c.URL(), "https://") {
		t.Fatalf("TLS files %v, URL %s", c.TLS, c.URL())
	}
	if _, _, err := c.Client(t, c.ManagementToken).ACL().TokenReadSelf(nil); err != nil {
		t.Fatalf("management token over HTTPS: %v", err)
	}
	reg := &consul.AgentServiceRegistration{ID: "x1", Name: "x", Port: 1}
	if err := c.Client(t, "").Agent().ServiceRegister(reg); err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("anonymous register over HTTPS: want permission denied, got %v", err)
	}
	if log := c.Log(); !strings.Contains(log, "protocol=https\n") || strings.Contains(log, "protocol=http\n") {
		t.Fatalf("want an HTTPS listener and no HTTP one; agent log:\n%s", log)
	}
	// Plain HTTP to the HTTPS port: Go's TLS server answers 400.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.Addr + "/v1/status/leader")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the HTTPS port answered plain HTTP")
		}
	}
	// No client certificate: refused (verify_incoming).
	cfg := consul.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token = c.Addr, "https", c.ManagementToken
	cfg.TLSConfig = consul.TLSConfig{CAFile: c.TLS.CAFile}
	cl, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Status().Leader(); err == nil {
		t.Fatal("HTTPS without a client certificate was accepted (verify_incoming)")
	}
}
