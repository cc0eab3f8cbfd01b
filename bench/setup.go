package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/registry"
)

const apiToken = "bench-token-0123456789abcdef0123456789abcdef"

type env struct {
	dir                     string
	upstream, stream, slow  *proc
	uPort, sPort, wPort     int
	consul                  *proc
	consulAddr              string
	cc                      *consul.Client
	router                  *proc
	routerURL               string
	nginx                   *proc
	nFast, nStream, nSlow   int
	direct, viaNginx, viaRt target
	// The TLS section's: the bench PKI (nil when it could not be made),
	// the TLS upstream's port (started by that section), nginx's TLS
	// listeners (in, out, both: see nginxServer).
	tls                       *tlsFiles
	tuPort                    int
	nTLSIn, nTLSOut, nTLSBoth int
	keep                      bool // -keep: close leaves dir in place
}

func cacheDir() string {
	if d := os.Getenv("LLORCH_CACHE"); d != "" {
		return d
	}
	h, _ := os.UserHomeDir()
	return filepath.Join(h, ".cache", "llorch")
}

func setup() (*env, error) {
	e := &env{}
	var err error
	if e.dir, err = os.MkdirTemp("", "llorch-bench-"); err != nil {
		return nil, err
	}
	logDir = e.dir // children's output goes to files here, never to a pipe that could fill and block them
	if e.tls, err = writeTLSFiles(e.dir); err != nil {
		fmt.Printf("  tls: %v: the TLS section will be missing\n", err)
	}
	e.tuPort = freePort()
	llorch, _ := filepath.Abs("bin/llorch")
	if _, err := os.Stat(llorch); err != nil {
		return nil, fmt.Errorf("bin/llorch missing (run make build): %w", err)
	}
	up := filepath.Join(e.dir, "upstream")
	if out, err := exec.Command("go", "build", "-o", up, "./bench/upstream").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build upstream: %v\n%s", err, out)
	}
	e.uPort, e.sPort, e.wPort = freePort(), freePort(), freePort()
	if e.upstream, err = start("upstream", nil, up, "-addr", addr(e.uPort), "-tokens", "8"); err != nil {
		return nil, err
	}
	if e.stream, err = start("stream", nil, up, "-addr", addr(e.sPort), "-tokens", "32", "-token-delay", "2ms"); err != nil {
		return nil, err
	}
	if e.slow, err = start("slow", nil, up, "-addr", addr(e.wPort), "-tokens", "20", "-token-delay", "100ms"); err != nil {
		return nil, err
	}
	for _, p := range []int{e.uPort, e.sPort, e.wPort} {
		if err := waitHTTP("http://"+addr(p)+"/v1/models", 10*time.Second); err != nil {
			return nil, err
		}
	}
	if err := e.startConsul(); err != nil {
		return nil, err
	}
	for _, r := range []struct {
		model string
		port  int
	}{{"bench", e.uPort}, {"bench-stream", e.sPort}, {"bench-slow", e.wPort}} {
		in := registry.Instance{ID: "bench-" + r.model, Service: registry.DefaultServiceName, Address: "127.0.0.1", Port: r.port,
			Model: r.model, Engine: "fixture", NodeID: "bench-node", Slots: 4096, APIs: []string{"/v1/chat/completions"}}
		meta, _ := in.Meta()
		if err := e.cc.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta}); err != nil {
			return nil, fmt.Errorf("register %s: %w", in.ID, err)
		}
	}
	rPort := freePort()
	e.routerURL = "http://" + addr(rPort)
	// The router as shipped: default log level (info) with its access
	// line per request. The engine CA only matters to engines announcing
	// TLS (the TLS section's "TLS out" path); plain engines ignore it.
	renv := []string{"LLORCH_ADDR=" + addr(rPort), "LLORCH_API_TOKEN=" + apiToken, "CONSUL_HTTP_ADDR=" + e.consulAddr, "LLORCH_QUEUE_CAPACITY=4096"}
	if e.tls != nil {
		renv = append(renv, "LLORCH_ENGINE_CA_FILE="+e.tls.CA)
	}
	if e.router, err = start("router", renv, llorch, "router"); err != nil {
		return nil, err
	}
	if err := e.waitModels(); err != nil {
		return nil, err
	}
	if err := e.startNginx(); err != nil {
		fmt.Printf("  nginx: %v\n  nginx: the nginx baseline is MISSING from this run: its columns read \"no nginx\" and goals relative to nginx are not judged\n", err)
	}
	e.direct = target{name: "direct", url: "http://" + addr(e.uPort)}
	e.viaRt = target{name: "llorch", url: e.routerURL, token: apiToken, pgid: e.router.cmd.Process.Pid}
	if e.nginx != nil {
		e.viaNginx = target{name: "nginx", url: "http://" + addr(e.nFast), pgid: e.nginx.cmd.Process.Pid}
	}
	return e, nil
}

func addr(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }

func (e *env) startConsul() error {
	bin := filepath.Join(cacheDir(), "bin", "consul")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("consul not found at %s (run scripts/build-consul.sh)", bin)
	}
	hp := freePort()
	e.consulAddr = addr(hp)
	var err error
	e.consul, err = start("consul", nil, bin, "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-node=bench-node",
		"-http-port="+strconv.Itoa(hp), "-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
		"-serf-lan-port="+strconv.Itoa(freePort()), "-serf-wan-port="+strconv.Itoa(freePort()), "-server-port="+strconv.Itoa(freePort()))
	if err != nil {
		return err
	}
	cfg := consul.DefaultConfig()
	cfg.Address = e.consulAddr
	if e.cc, err = consul.NewClient(cfg); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if l, err := e.cc.Status().Leader(); err == nil && l != "" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("consul did not start")
}

func (e *env) waitModels() error {
	return waitRoute(newClient(4), target{url: e.routerURL, token: apiToken})
}

// waitRoute waits until t answers its request (a router that has
// discovered the model's instance) or 20 s pass.
func waitRoute(cl *http.Client, t target) error {
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = do(cl, t, t.payload()); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer a chat request in 20s: %w", t.url, err)
}

func (e *env) close() {
	for _, p := range []*proc{e.router, e.nginx, e.consul, e.upstream, e.stream, e.slow} {
		p.stop()
	}
	if e.keep {
		fmt.Printf("bench: the run's directory is kept: %s\n", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}
