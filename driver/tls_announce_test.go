package driver_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
	"github.com/llorch/llorch/registry"
)

// A task with tls_cert_file/tls_key_file: llama-server serves HTTPS with
// the task's pair, the supervisor's probes reach it (the instance turns
// passing, which needs them), and the registration carries tls=1, so a
// router reads an https:// URL that verifies against the task's CA.
func TestAnnounceTLS(t *testing.T) {
	e := newAnnounceEnv(t, consultest.DriverPolicy(t))
	p := e.plugin(t)
	a := newAlloc(t)
	ca := tlstest.NewCA(t, "fleet-ca")
	f := ca.WriteFiles(t, t.TempDir(), "engine", "engine", "127.0.0.1")
	tc := a.taskConfig(t, p, map[string]interface{}{
		"engine": "llamacpp", "model": e.model, "model_name": "tiny", "port": "http",
		"slots": 1, "ctx": 512, "threads": 1, "tls_cert_file": f.Cert, "tls_key_file": f.Key,
	})
	start(t, p, tc)
	t.Cleanup(func() {
		p.Driver.DestroyTask(ctxT(t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tc.GetId(), Force: true})
		a.requireNoProcesses(t)
	})

	var inst registry.Instance
	eventually(t, 90*time.Second, "a passing registration with tls=1", func() bool {
		entries, _, err := e.reader.Health().Service(registry.DefaultServiceName, "", true, nil)
		if err != nil || len(entries) != 1 {
			return false
		}
		s := entries[0].Service
		if inst, err = registry.FromRegistry(s.ID, s.Service, s.Address, s.Port, s.Tags, s.Meta, registry.HealthPassing); err != nil {
			t.Fatal(err)
		}
		return inst.TLS
	})
	if want := "https://127.0.0.1:" + strconv.Itoa(a.port); inst.URL() != want {
		t.Fatalf("announced URL %s, want %s", inst.URL(), want)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := cl.Get(inst.URL() + "/health")
	if err != nil {
		t.Fatalf("HTTPS to the announced URL, verified by the task's CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/health over HTTPS: %d", resp.StatusCode)
	}
	if r, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://127.0.0.1:" + strconv.Itoa(a.port) + "/health"); err == nil {
		r.Body.Close()
		if r.StatusCode == 200 {
			t.Error("the port also answers plain HTTP")
		}
	}
}
