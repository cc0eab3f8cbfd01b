package testenv

import (
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
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
