package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/registry"
)

// tlsModel is the model only the TLS upstream serves: asking for it sends
// the router over its TLS hop to the engine.
const tlsModel = "bench-tls"

var tlsChatBody = []byte(`{"model":"` + tlsModel + `","messages":[{"role":"user","content":"hello"}],"max_tokens":8}`)

// tlsNote says what the TLS section compares, for the table's notes.
const tlsNote = "Paths: plain → plain (as in the overhead section); TLS in = client→proxy TLS, proxy→engine plain (TLS termination); " +
	"TLS out = client→proxy plain, proxy→engine TLS; TLS both. The engine is verified against the bench CA on both proxies " +
	"(llorch: LLORCH_ENGINE_CA_FILE, meta tls=1; nginx: proxy_pass https:// with proxy_ssl_verify on, proxy_ssl_trusted_certificate, keepalive, proxy_ssl_session_reuse on). " +
	"Added = the path's figure minus a plain direct call to the plain upstream at the same percentile, so it counts all TLS work on the path. " +
	"One throwaway ECDSA P-256 CA and certificate for every TLS endpoint; the client keeps connections alive, speaks HTTP/1.1, offers X25519 only, and verifies against the CA; " +
	"the TLS upstream speaks HTTP/1.1 only, as llama-server does. Both proxies write an access line per request."

// tlsPath is one way through a proxy; rt and ng name its llorch and nginx
// targets.
type tlsPath struct{ label, rt, ng string }

var tlsPaths = []tlsPath{
	{"plain → plain", "llorch", "nginx"},
	{"TLS in", "llorch TLS in", "nginx TLS in"},
	{"TLS out", "llorch TLS out", "nginx TLS out"},
	{"TLS both", "llorch TLS both", "nginx TLS both"},
}

// tlsStack is what the TLS section starts beside setup's processes: the
// TLS upstream (registered in Consul with meta tls=1) and a router serving
// TLS that trusts the bench CA for engines.
type tlsStack struct {
	e                  *env
	upstream, router   *proc
	routerURL          string
	registered         string // Consul service id, "" until registered
	client, handshakes *http.Client
}

func (e *env) startTLS() (*tlsStack, error) {
	s := &tlsStack{e: e, client: newTLSClient(512, e.tls.pool, true), handshakes: newTLSClient(16, e.tls.pool, false)}
	var err error
	if s.upstream, err = start("upstream-tls", nil, filepath.Join(e.dir, "upstream"), "-addr", addr(e.tuPort), "-tokens", "8",
		"-tls-cert", e.tls.Cert, "-tls-key", e.tls.Key); err != nil {
		return s, err
	}
	if err := waitHTTPWith(s.client, "https://"+addr(e.tuPort)+"/v1/models", 10*time.Second); err != nil {
		return s, fmt.Errorf("TLS upstream: %w", err)
	}
	in := registry.Instance{ID: "bench-" + tlsModel, Service: registry.DefaultServiceName, Address: "127.0.0.1", Port: e.tuPort, TLS: true,
		Model: tlsModel, Engine: "fixture", NodeID: "bench-node", Slots: 4096, APIs: []string{"/v1/chat/completions"}}
	meta, _ := in.Meta()
	if err := e.cc.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta}); err != nil {
		return s, fmt.Errorf("register %s: %w", in.ID, err)
	}
	s.registered = in.ID
	rPort := freePort()
	s.routerURL = "https://" + addr(rPort)
	llorch, _ := filepath.Abs("bin/llorch")
	if s.router, err = start("router-tls", []string{"LLORCH_ADDR=" + addr(rPort), "LLORCH_API_TOKEN=" + apiToken, "CONSUL_HTTP_ADDR=" + e.consulAddr,
		"LLORCH_QUEUE_CAPACITY=4096", "LLORCH_TLS_CERT_FILE=" + e.tls.Cert, "LLORCH_TLS_KEY_FILE=" + e.tls.Key, "LLORCH_ENGINE_CA_FILE=" + e.tls.CA}, llorch, "router"); err != nil {
		return s, err
	}
	for _, w := range []struct {
		cl *http.Client
		t  target
	}{
		{s.client, target{url: s.routerURL, token: apiToken}},
		{s.client, target{url: s.routerURL, token: apiToken, body: tlsChatBody}},
		{newClient(4), target{url: e.routerURL, token: apiToken, body: tlsChatBody}},
	} {
		if err := waitRoute(w.cl, w.t); err != nil {
			return s, err
		}
	}
	return s, nil
}

// close takes the TLS instance out of Consul before its upstream stops, so
// the routers that outlive the section never see it fail.
func (s *tlsStack) close() {
	if s.registered != "" {
		_ = s.e.cc.Agent().ServiceDeregister(s.registered)
	}
	s.router.stop()
	s.upstream.stop()
}

// targets are the section's open-loop targets: direct (plain and TLS), and
// each path's llorch and, with nginx, nginx.
func (s *tlsStack) targets() []target {
	e := s.e
	ts := []target{e.direct, {name: "direct TLS", url: "https://" + addr(e.tuPort), body: tlsChatBody},
		e.viaRt,
		{name: "llorch TLS in", url: s.routerURL, token: apiToken, pgid: s.router.cmd.Process.Pid},
		{name: "llorch TLS out", url: e.routerURL, token: apiToken, pgid: e.viaRt.pgid, body: tlsChatBody},
		{name: "llorch TLS both", url: s.routerURL, token: apiToken, pgid: s.router.cmd.Process.Pid, body: tlsChatBody}}
	if e.nginx != nil {
		ng := e.nginx.cmd.Process.Pid
		ts = append(ts, e.viaNginx,
			target{name: "nginx TLS in", url: "https://" + addr(e.nTLSIn), pgid: ng},
			target{name: "nginx TLS out", url: "http://" + addr(e.nTLSOut), pgid: ng, body: tlsChatBody},
			target{name: "nginx TLS both", url: "https://" + addr(e.nTLSBoth), pgid: ng, body: tlsChatBody})
	}
	return ts
}

func (s *tlsStack) clientFor(t target, plain *http.Client) *http.Client {
	if strings.HasPrefix(t.url, "https://") {
		return s.client
	}
	return plain
}

func tlsBench(e *env, round time.Duration, rounds int) {
	const section = "TLS, open loop 1,000 rps, keep-alive"
	if e.tls == nil {
		notMeasured(section, "all figures", "the bench could not make its certificates (see setup's message)")
		return
	}
	s, err := e.startTLS()
	defer s.close()
	if err != nil {
		notMeasured(section, "all figures", err.Error())
		return
	}
	plain := newClient(512)
	res, cpu := measureRounds(s.targets(), rounds, func(t target) sample {
		cl := s.clientFor(t, plain)
		warm(cl, t)
		return openLoop(cl, t, 1000, round)
	})
	note(section, tlsNote)
	tlsRows(section, res, cpu, e.nginx != nil)

	// A fresh connection per request: what a full handshake costs each
	// proxy, closed loop so each serves as many as it can.
	const hs = "TLS, a new connection (full handshake) per request, closed loop 16 concurrent"
	ht := []target{{name: "direct TLS", url: "https://" + addr(e.tuPort), body: tlsChatBody}, {name: "llorch TLS in", url: s.routerURL, token: apiToken, pgid: s.router.cmd.Process.Pid}}
	if e.nginx != nil {
		ht = append(ht, target{name: "nginx TLS in", url: "https://" + addr(e.nTLSIn), pgid: e.nginx.cmd.Process.Pid})
	}
	thr := map[string]float64{}
	hres, hcpu := measureRounds(ht, rounds, func(t target) sample {
		smp, x := closedLoop(s.handshakes, t, 16, round)
		thr[t.name] += x / float64(rounds)
		return smp
	})
	note(hs, "Same certificate and client as above, with keep-alive off: every request is a TCP connection and a TLS handshake (X25519, ECDSA P-256). direct is the Go upstream serving TLS itself, no proxy.")
	handshakeRows(hs, hres, hcpu, thr, e.nginx != nil)
}

// warm fills t's connection pools on every hop (client→proxy and
// proxy→engine) before a measured round: the figures are of keep-alive
// connections, and on a small machine a burst of cold TLS handshakes at
// the start of a round would otherwise queue the whole round behind it.
func warm(cl *http.Client, t target) {
	closedLoop(cl, t, 8, 300*time.Millisecond)
}

// tlsRows reports the open-loop TLS figures: per path, p50 and p99 added
// and CPU per request, llorch beside nginx. Without nginx its column says
// so and nothing reads its (absent) entries.
func tlsRows(section string, res map[string]*sample, cpu map[string]uint64, haveNginx bool) {
	d := res["direct"].lat
	if dt := res["direct TLS"]; dt != nil {
		add(section, "TLS to the upstream, no proxy: p50 / p99 added", "-",
			added(pct(dt.lat, 0.5)-pct(d, 0.5))+" / "+added(pct(dt.lat, 0.99)-pct(d, 0.99))+" (direct over TLS)", "", nil)
	}
	var lerr, ln, nerr, nn int
	var lwhy []string
	for _, p := range tlsPaths {
		rt := res[p.rt]
		lerr, ln = lerr+rt.err, ln+rt.n
		if rt.err > 0 {
			lwhy = append(lwhy, fmt.Sprintf("%s: %d, first: %s", p.label, rt.err, rt.first))
		}
		var ng *sample
		if haveNginx {
			ng = res[p.ng]
			nerr, nn = nerr+ng.err, nn+ng.n
		}
		for _, q := range []struct {
			name string
			q    float64
		}{{"p50", 0.5}, {"p99", 0.99}} {
			la := pct(rt.lat, q.q) - pct(d, q.q)
			base := "no nginx"
			if ng != nil {
				na := pct(ng.lat, q.q) - pct(d, q.q)
				base = added(na) + " (nginx)"
				if r, ok, _ := addedRatio(la, na); ok {
					base += fmt.Sprintf(", llorch/nginx %.2f×", r)
				}
			}
			add(section, p.label+": "+q.name+" added", added(la), base, "", nil)
		}
		base := "no nginx"
		if ng != nil {
			base = cpuText(cpu[p.ng], ng.n) + " (nginx)"
		}
		add(section, p.label+": proxy CPU per request", cpuText(cpu[p.rt], rt.n), base, "", nil)
	}
	base := "no nginx"
	if haveNginx {
		base = fmt.Sprintf("%d of %d (nginx)", nerr, nn)
	}
	errs := fmt.Sprintf("%d of %d", lerr, ln)
	if len(lwhy) > 0 {
		errs += " (" + strings.Join(lwhy, "; ") + ")"
	}
	add(section, "errors, all paths", errs, base, "0", b(lerr == 0))
}

// handshakeRows reports the new-connection figures: requests/s and CPU
// per request of llorch's TLS listener beside nginx's and direct's.
func handshakeRows(section string, res map[string]*sample, cpu map[string]uint64, thr map[string]float64, haveNginx bool) {
	rt := res["llorch TLS in"]
	base, cbase, ebase := fmt.Sprintf("%.0f req/s (direct)", thr["direct TLS"]), "no nginx", "no nginx"
	if haveNginx {
		ng := res["nginx TLS in"]
		base = fmt.Sprintf("%.0f req/s (nginx), ", thr["nginx TLS in"]) + base
		cbase = cpuText(cpu["nginx TLS in"], ng.n) + " (nginx)"
		ebase = fmt.Sprintf("%d of %d (nginx)", ng.err, ng.n)
	}
	add(section, "requests/s", fmt.Sprintf("%.0f req/s", thr["llorch TLS in"]), base, "", nil)
	add(section, "proxy CPU per request (handshake included)", cpuText(cpu["llorch TLS in"], rt.n), cbase, "", nil)
	lat := ms(pct(res["direct TLS"].lat, 0.5)) + " (direct)"
	if haveNginx {
		lat = ms(pct(res["nginx TLS in"].lat, 0.5)) + " (nginx), " + lat
	}
	add(section, "p50 latency", ms(pct(rt.lat, 0.5)), lat, "", nil)
	add(section, "errors", fmt.Sprintf("%d of %d", rt.err, rt.n), ebase, "0", b(rt.err == 0))
}
