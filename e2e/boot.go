package e2e

import (
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/testenv"
)

// bootCluster brings up a run: the network (a control host and three GPU
// hosts), the Consul server with ACLs and the tokens, a client agent per
// host, the router and a driver per host; no engines yet. withTLS makes it
// the TLS variant (every hop over TLS, tls.go).
func bootCluster(t *testing.T, withTLS bool) *cluster {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "ip", "sudo scripts/install-deps.sh (iproute2)")
	lockRun(t)
	sweep()
	f, err := newFabric()
	if err != nil {
		t.Fatalf("network: %v", err)
	}
	// Clean up on failure and on interrupt too.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sig; ok {
			f.destroy()
			os.Exit(130)
		}
	}()
	t.Cleanup(func() { signal.Stop(sig); close(sig); f.destroy() })
	hosts := []struct{ name, ip string }{{"ctl", subnet + "1"}, {"n1", subnet + "11"}, {"n2", subnet + "12"}, {"n3", subnet + "13"}}
	for _, h := range hosts {
		if err := f.addHost(h.name, h.ip); err != nil {
			t.Fatalf("host %s: %v", h.name, err)
		}
	}
	c := newCluster(t, f, withTLS)
	c.model = filepath.Join(c.dir, "tiny.gguf")
	if err := ggufgen.Write(c.model, ggufgen.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	c.startConsul("ctl", true)
	c.waitConsulACL()
	c.makeTokens()
	for _, h := range []string{"n1", "n2", "n3"} {
		c.startConsul(h, false)
	}
	members := func() int {
		ms, err := c.api(c.mgmt).Agent().Members(false)
		if err != nil {
			return 0
		}
		n := 0
		for _, m := range ms {
			if m.Status == 1 {
				n++
			}
		}
		return n
	}
	eventually(t, 60*time.Second, "4 Consul members", func() bool { return members() == 4 })
	c.startRouter()
	for _, h := range []string{"n1", "n2", "n3"} {
		c.startDriver(h)
	}
	return c
}
