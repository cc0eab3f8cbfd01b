package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Consul is a running `consul agent -dev` on loopback with ACLs on and
// default deny.
type Consul struct {
	Addr            string // host:port of the HTTP API (of the HTTPS API when TLS is set)
	ManagementToken string // the bootstrap (initial management) token
	// TLS is set when the agent serves its API over HTTPS only
	// (StartConsulTLS): the files a client needs to reach it.
	TLS      *ConsulTLSFiles
	cmd      *exec.Cmd
	logPath  string
	dir      string
	bin      string
	ports    consulPorts
	configs  []string // -config-file arguments
	probe    *http.Client
	probeURL string
}

type consulPorts struct{ http, serfLAN, serfWAN, server, grpc int }

// StartConsul starts a dev agent and stops it when the test ends.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	c := newConsul(t)
	c.start(t)
	return c
}

func newConsul(t testing.TB) *Consul {
	t.Helper()
	c := &Consul{
		bin:             ConsulBinary(t),
		dir:             t.TempDir(),
		ManagementToken: uuid.NewString(),
		ports: consulPorts{
			http: FreePort(t), serfLAN: FreePort(t), serfWAN: FreePort(t),
			server: FreePort(t), grpc: FreePort(t),
		},
		probe: &http.Client{Timeout: 5 * time.Second},
	}
	c.Addr = "127.0.0.1:" + strconv.Itoa(c.ports.http)
	c.probeURL = "http://" + c.Addr
	c.logPath = filepath.Join(c.dir, "consul.log")
	return c
}

// start writes the ACL config, starts the agent and stops it when the
// test ends.
func (c *Consul) start(t testing.TB) {
	t.Helper()
	cfg := fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens { initial_management = %q }
}
`, c.ManagementToken)
	acl := filepath.Join(c.dir, "acl.hcl")
	if err := os.WriteFile(acl, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.configs = append([]string{acl}, c.configs...)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
}

// Start (re)starts the agent on the same ports; a dev agent keeps no data,
// so a restart comes back empty, as a lost server would.
func (c *Consul) Start() error {
	log, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	args := []string{"agent", "-dev",
		"-bind=127.0.0.1", "-client=127.0.0.1", "-node=consul-test", "-dns-port=-1",
		"-serf-lan-port=" + strconv.Itoa(c.ports.serfLAN), "-serf-wan-port=" + strconv.Itoa(c.ports.serfWAN),
		"-server-port=" + strconv.Itoa(c.ports.server), "-grpc-port=" + strconv.Itoa(c.ports.grpc),
		// The dev agent otherwise takes the fixed gRPC-TLS port 8503, so
		// two test packages starting Consul at once would collide.
		"-grpc-tls-port=-1",
	}
	if c.TLS != nil {
		// HTTPS only: no plain HTTP listener at all, as production
		// agents with ports { http = -1 } have.
		args = append(args, "-http-port=-1", "-https-port="+strconv.Itoa(c.ports.http))
	} else {
		args = append(args, "-http-port="+strconv.Itoa(c.ports.http))
	}
	for _, f := range c.configs {
		args = append(args, "-config-file="+f)
	}
	c.cmd = exec.Command(c.bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("start consul: %w", err)
	}
	return c.waitLeader(30 * time.Second)
}

func (c *Consul) waitLeader(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		// Ready means the ACL system is up: the management token resolves
		// and the anonymous token exists (before that, Consul answers
		// "ACL not found" to everyone).
		if c.tokenResolves(ctx, c.ManagementToken) && c.tokenResolves(ctx, "anonymous") {
			return nil
		}
		select {
		case <-ctx.Done():
			out, _ := os.ReadFile(c.logPath)
			return fmt.Errorf("consul did not elect a leader in %v: %s", d, tail(out, 2000))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Consul) tokenResolves(ctx context.Context, token string) bool {
	url := c.probeURL + "/v1/acl/token/self"
	if token == "anonymous" {
		url = c.probeURL + "/v1/acl/token/00000000-0000-0000-0000-000000000002"
		token = c.ManagementToken
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("X-Consul-Token", token)
	resp, err := c.probe.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Stop kills the agent (idempotent).
func (c *Consul) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	c.cmd = nil
}

// Log returns what the agent logged so far.
func (c *Consul) Log() string {
	b, _ := os.ReadFile(c.logPath)
	return string(b)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
