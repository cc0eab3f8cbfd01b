package authmin_test

import (
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/registry"
)

// The predecessor's sixth auth scenario, "registration without a token",
// is Consul's job in llorch: engines register in Consul, so the gate is
// Consul's ACL, not our middleware. Against a real agent with default deny:
// no token and the router's read-only token are refused with Consul's
// "Permission denied"; the shipped driver policy is allowed (so the test
// can tell a refusal from a broken agent).
func TestConsulWriteWithoutPermission(t *testing.T) {
	c := testenv.StartConsul(t)
	reg := &consul.AgentServiceRegistration{
		ID:   "authmin-test-1",
		Name: registry.DefaultServiceName,
		Port: 9,
	}
	for name, token := range map[string]string{
		"anonymous":         "",
		"router read token": c.Token(t, consultest.RouterPolicy(t)),
	} {
		err := c.Client(t, token).Agent().ServiceRegister(reg)
		if err == nil || !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("%s registering %s: want Consul's permission error, got %v", name, registry.DefaultServiceName, err)
		}
	}
	if err := c.Client(t, c.Token(t, consultest.DriverPolicy(t))).Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("driver token registering %s: %v", registry.DefaultServiceName, err)
	}
	svcs, _, err := c.Client(t, c.ManagementToken).Catalog().Service(registry.DefaultServiceName, "", nil)
	if err != nil || len(svcs) != 1 {
		t.Fatalf("catalog after one allowed registration: %d entries, %v", len(svcs), err)
	}
}
