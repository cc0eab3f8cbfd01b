package cli

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadfake"
	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/jobs"
	"github.com/llorch/llorch/registry"
)

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedLog) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// `llorch router --nomad-addr … --nomad-token-file …` (the built binary)
// wakes a pool at zero through the Nomad API with the shipped policy's
// token and answers the request once the engine passes in Consul.
func TestRouterBinaryWakesPool(t *testing.T) {
	bin := nomadclient.Binary(t)
	c := testenv.StartConsul(t)
	admin := c.Client(t, c.ManagementToken)
	var rules string
	for _, f := range []string{"../deploy/consul/router-policy.hcl", "../deploy/consul/router-scaler-policy.hcl"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rules += string(b) + "\n"
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	consulTok := write("consul.token", c.Token(t, rules))
	nomadTok := write("nomad.token", "router-nomad-secret")

	fake := nomadfake.Start(t)
	policy, err := os.ReadFile("../deploy/nomad/router-scaler-policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	fake.Grant("router-nomad-secret", string(policy))
	zero := 0
	spec := jobs.PoolSpec{Name: "tiny", Model: "/m/tiny.gguf", Min: &zero, Max: 2}
	spec.Defaults()
	fake.AddJob(jobs.Render(spec))
	_, fx := openaifixture.Start(t, "tiny")
	fake.OnScale = func(s nomadfake.Scale) {
		u, _ := url.Parse(fx.URL)
		port, _ := strconv.Atoi(u.Port())
		in := registry.Instance{ID: "tiny-0", Service: registry.DefaultServiceName, Address: u.Hostname(), Port: port, Model: "tiny",
			Engine: "fixture", NodeID: "n1", PoolID: "tiny", Slots: 1, APIs: []string{"/v1/chat/completions"}}
		meta, _ := in.Meta()
		if err := admin.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port,
			Tags: in.Tags(), Meta: meta, Check: &consulapi.AgentServiceCheck{CheckID: "ttl-tiny-0", TTL: "60s", Status: consulapi.HealthPassing}}); err != nil {
			t.Errorf("register: %v", err)
		}
	}

	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	const apiToken = "client-token-0123456789abcdef0123456789"
	cmd := exec.Command(bin, "router", "--addr", addr, "--consul-addr", c.Addr, "--consul-token-file", consulTok,
		"--nomad-addr", fake.URL, "--nomad-token-file", nomadTok, "--scale-interval", "200ms")
	cmd.Env = append(os.Environ(), "LLORCH_API_TOKEN="+apiToken, "CONSUL_HTTP_TOKEN=", "NOMAD_TOKEN=")
	log := &lockedLog{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); <-done })

	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(log.String(), "pool follows demand: pool=tiny") {
		if time.Now().After(deadline) {
			t.Fatalf("the router never found the pool:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/chat/completions", strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("request to the pool at zero: %d %s\n%s", resp.StatusCode, body, log)
	}
	if s := fake.Scales(); len(s) != 1 || s[0].To != 1 || s[0].Meta["llorch_reason"] != "wake" {
		t.Fatalf("scales: %+v", s)
	}
	if !strings.Contains(log.String(), "nomad token: from=") {
		t.Fatalf("log lacks the token fingerprint:\n%s", log)
	}
	// The scaler logs the scaling when Nomad's answer reaches it; the fake
	// starts the engine before that answer is sent, so the request can be
	// served before the line is written. Wait for it, do not race it.
	deadline = time.Now().Add(15 * time.Second)
	for !strings.Contains(log.String(), "scaled pool: pool=tiny from=0 to=1 reason=wake") {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks the scaling:\n%s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(log.String(), "router-nomad-secret") {
		t.Fatal("the Nomad token appears in the log")
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		t.Fatal("router did not exit on SIGTERM")
	}
}
