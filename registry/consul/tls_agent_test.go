package consul

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/testenv"
	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/discovery"
)

// routerClient is the router's Consul client as cli/router.go makes it:
// no per-call timeout (blocking queries), TLS from the given files.
func routerClient(t *testing.T, addr, token string, tls TLS) *consulapi.Client {
	t.Helper()
	cc := consulapi.DefaultConfig()
	cc.Address, cc.Token = addr, token
	if err := tls.Apply(cc, 0); err != nil {
		t.Fatal(err)
	}
	cl, err := consulapi.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// watchView runs a router's discovery view on cl until the test ends.
func watchView(t *testing.T, cl *consulapi.Client, log hclog.Logger) *discovery.View {
	t.Helper()
	v := discovery.NewView()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- v.Run(ctx, &Watcher{Client: cl, WaitTime: 2 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, Logger: log})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return v
}

// The shipped policies over a real HTTPS-only agent that verifies clients
// (ports { http = -1 }, tls.https.verify_incoming): the driver's registrar
// (driver-policy.hcl token) announces an instance, the router's watcher
// (router-policy.hcl token) discovers it and sees it leave.
func TestRegistrarAndWatcherOverRealTLSAgent(t *testing.T) {
	clearConsulEnv(t)
	ca := tlstest.NewCA(t, "consul-ca")
	c := testenv.StartConsulTLS(t, testenv.ConsulTLS{CA: ca, VerifyIncoming: true})
	files := TLS{CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile}
	driverTok := c.Token(t, consultest.DriverPolicy(t))
	routerTok := c.Token(t, consultest.RouterPolicy(t))

	reg, err := NewRegistrar(RegistrarConfig{Address: c.Addr, Token: driverTok, TLS: files, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	v := watchView(t, routerClient(t, c.Addr, routerTok, files), hclog.New(&hclog.LoggerOptions{Output: testLog{t}}))
	waitUntil(t, 10*time.Second, "first snapshot over HTTPS", v.Synced)

	inst := testInstance("tls-a", 9443)
	inst.TLS, inst.Health = true, registry.HealthPassing
	if err := reg.Register(callCtx(t), inst); err != nil {
		t.Fatalf("driver-policy registrar over HTTPS: %v", err)
	}
	waitUntil(t, 10*time.Second, "instance discovered over HTTPS", func() bool { return equal(ids(v), []string{"tls-a"}) })
	got := v.Current().Instances[0]
	if !got.TLS || got.URL() != "https://127.0.0.1:9443" {
		t.Errorf("discovered %+v (URL %s), want tls=1 and an https URL", got, got.URL())
	}
	if err := reg.Deregister(callCtx(t), inst.ID); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "deregistration seen over HTTPS", func() bool { return len(ids(v)) == 0 })

	// ACLs hold over HTTPS too: the router's token cannot register.
	rr, _ := NewRegistrar(RegistrarConfig{Address: c.Addr, Token: routerTok, TLS: files})
	if err := rr.Register(callCtx(t), inst); !errors.Is(err, ErrACLDenied) {
		t.Errorf("router token registering over HTTPS: %v, want ErrACLDenied", err)
	}
}

// The same agent refuses what is not HTTPS with its CA and a client
// certificate, each with an error that names the cause.
func TestRealTLSAgentRefusesPlaintextAndWrongCA(t *testing.T) {
	clearConsulEnv(t)
	ca := tlstest.NewCA(t, "consul-ca")
	c := testenv.StartConsulTLS(t, testenv.ConsulTLS{CA: ca, VerifyIncoming: true})
	driverTok := c.Token(t, consultest.DriverPolicy(t))
	good := TLS{CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile}
	other := tlstest.NewCA(t, "other-ca").WriteFiles(t, t.TempDir(), "client", "llorch-driver")
	inst := testInstance("tls-b", 9444)
	register := func(addr string, tls TLS) error {
		r, err := NewRegistrar(RegistrarConfig{Address: addr, Token: driverTok, TLS: tls})
		if err != nil {
			return err
		}
		return r.Register(callCtx(t), inst)
	}

	for _, tc := range []struct {
		name, addr string
		tls        TLS
		want       string // in the error
	}{
		// Plain HTTP to the only port there is: the TLS server's answer.
		{"plain HTTP", "http://" + c.Addr, TLS{}, "HTTP request to an HTTPS server"},
		{"no CA (system roots)", c.Addr, TLS{CertFile: good.CertFile, KeyFile: good.KeyFile}, "certificate signed by unknown authority"},
		{"another CA", c.Addr, TLS{CAFile: other.CA, CertFile: good.CertFile, KeyFile: good.KeyFile}, "certificate signed by unknown authority"},
		// verify_incoming: under TLS 1.3 the agent's alert comes after the
		// client's handshake, so the error is "remote error: tls:
		// certificate required" or, when HTTP/2 got there first, "http2:
		// client conn could not be established": only the URL is certain.
		{"client certificate of another CA", c.Addr, TLS{CAFile: good.CAFile, CertFile: other.Cert, KeyFile: other.Key}, "https://" + c.Addr},
		{"no client certificate", c.Addr, TLS{CAFile: good.CAFile}, "https://" + c.Addr},
	} {
		err := register(tc.addr, tc.tls)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	if svcs, _, err := c.Client(t, c.ManagementToken).Catalog().Service(registry.DefaultServiceName, "", nil); err != nil || len(svcs) != 0 {
		t.Errorf("a refused client registered something: %v %v", svcs, err)
	}
	if err := register(c.Addr, good); err != nil {
		t.Fatalf("the right files: %v", err)
	}

	// The router's watcher with the wrong CA never syncs and says why.
	var buf syncBuffer
	v := watchView(t, routerClient(t, c.Addr, c.Token(t, consultest.RouterPolicy(t)), TLS{CAFile: other.CA, CertFile: good.CertFile, KeyFile: good.KeyFile}),
		hclog.New(&hclog.LoggerOptions{Output: &buf}))
	waitUntil(t, 10*time.Second, "the watcher logging the TLS failure", func() bool {
		return strings.Contains(buf.String(), "certificate signed by unknown authority")
	})
	if v.Synced() {
		t.Error("a watcher with the wrong CA synced")
	}
}

func callCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
