package testenv

import (
	"testing"

	"github.com/google/uuid"
	consul "github.com/hashicorp/consul/api"
)

// Client returns a consul/api client using the given token (over HTTPS,
// with the CA and client pair, when the agent serves TLS).
func (c *Consul) Client(t testing.TB, token string) *consul.Client {
	t.Helper()
	cfg := consul.DefaultConfig()
	cfg.Address = c.Addr
	cfg.Token = token
	if c.TLS != nil {
		cfg.Scheme = "https"
		cfg.TLSConfig = consul.TLSConfig{CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile}
	}
	cl, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return cl
}

// Token creates a policy from HCL rules and a token holding it; it returns
// the token's secret.
func (c *Consul) Token(t testing.TB, rules string) string {
	t.Helper()
	acl := c.Client(t, c.ManagementToken).ACL()
	pol, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: "p-" + uuid.NewString()[:8], Rules: rules}, nil)
	if err != nil {
		t.Fatalf("create policy: %v", err)
	}
	tok, _, err := acl.TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return tok.SecretID
}
