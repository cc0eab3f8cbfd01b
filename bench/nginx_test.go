package main

import (
	"errors"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/openaifixture"
)

// Missing nginx: as root the bench installs it and looks again; otherwise
// it says the baseline is missing and installs nothing.
func TestFindNginx(t *testing.T) {
	installed := false
	look := func() (string, error) {
		if installed {
			return "/usr/sbin/nginx", nil
		}
		return "", errors.New("not installed")
	}
	installs := 0
	install := func() error { installs++; installed = true; return nil }
	if _, err := findNginx(look, false, install); !errors.Is(err, errNoNginx) || installs != 0 {
		t.Fatalf("not root: err %v, installs %d; want errNoNginx and no install", err, installs)
	}
	p, err := findNginx(look, true, install)
	if err != nil || p != "/usr/sbin/nginx" || installs != 1 {
		t.Fatalf("root: %q %v, installs %d", p, err, installs)
	}
	if _, err := findNginx(look, true, install); err != nil || installs != 1 {
		t.Fatalf("present: %v, installs %d (no second install)", err, installs)
	}
	installed = false
	broken := func() error { return errors.New("apt-get: no network") }
	if _, err := findNginx(look, true, broken); err == nil || !strings.Contains(err.Error(), "no network") {
		t.Fatalf("failed install: %v", err)
	}
}

// The generated configuration, TLS listeners and the verified TLS hop
// included, is one nginx accepts (nginx -t), with the access log on.
func TestNginxConfParses(t *testing.T) {
	bin, err := lookNginx()
	if err != nil {
		t.Skip("nginx not installed")
	}
	dir := t.TempDir()
	tf, err := writeTLSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	conf := nginxConf(dir, []nginxServer{{listen: 18001, upstream: 18002}, {listen: 18003, tlsIn: true, upstream: 18002},
		{listen: 18004, upstream: 18005, tlsOut: true}, {listen: 18006, tlsIn: true, upstream: 18005, tlsOut: true}}, tf)
	for _, want := range []string{"buffer=64k", "listen 127.0.0.1:18003 ssl;", "proxy_pass https://up2;", "proxy_ssl_verify on;", "proxy_ssl_session_reuse on;"} {
		if !strings.Contains(conf, want) {
			t.Errorf("configuration lacks %q", want)
		}
	}
	cf := dir + "/nginx.conf"
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-c", cf, "-p", dir, "-g", "daemon off;").CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n%s", err, out, conf)
	}
}

// With no nginx the overhead and streaming sections run to the end, say
// "no nginx" where its figures would be, and judge no goal relative to it.
func TestSectionsWithoutNginx(t *testing.T) {
	_, hs := openaifixture.Start(t, "bench")
	u, _ := url.Parse(hs.URL)
	_, port, _ := net.SplitHostPort(u.Host)
	p, _ := strconv.Atoi(port)
	e := &env{sPort: p, routerURL: hs.URL,
		direct: target{name: "direct", url: hs.URL}, viaRt: target{name: "llorch", url: hs.URL, pgid: os.Getpid()}}
	rows, notes = nil, map[string][]string{}
	defer func() { rows, notes = nil, map[string][]string{} }()
	old := idleWindow
	idleWindow = 0
	defer func() { idleWindow = old }()
	routerOverhead(e, 50e6, 1)
	streamRelay(e)
	if len(rows) == 0 {
		t.Fatal("no rows")
	}
	ratios := 0
	for _, r := range rows {
		if strings.Contains(r.Figure, "llorch/nginx") {
			ratios++
			if r.Llorch != "no nginx" || r.Met != "" {
				t.Errorf("%s / %s: %q met %q without nginx", r.Section, r.Figure, r.Llorch, r.Met)
			}
		}
		if strings.Contains(r.Base, "(nginx") {
			t.Errorf("%s / %s: baseline %q names an nginx figure without nginx", r.Section, r.Figure, r.Base)
		}
	}
	if ratios == 0 {
		t.Error("no llorch/nginx rows at all: the goals relative to nginx are gone from the table")
	}
}

// The TLS tables without nginx: every row present, nginx columns say so.
func TestTLSRowsWithoutNginx(t *testing.T) {
	rows = nil
	defer func() { rows = nil }()
	res := map[string]*sample{"direct": {lat: lat(100), n: 1}, "direct TLS": {lat: lat(150), n: 1}}
	for _, p := range tlsPaths {
		res[p.rt] = &sample{lat: lat(300), n: 1}
	}
	tlsRows("tls", res, map[string]uint64{}, false)
	res["llorch TLS in"].err = 1
	handshakeRows("hs", res, map[string]uint64{}, map[string]float64{"llorch TLS in": 500}, false)
	if want := 1 + 3*len(tlsPaths) + 1 + 4; len(rows) != want {
		t.Fatalf("%d rows, want %d", len(rows), want)
	}
	for _, r := range rows {
		if strings.Contains(r.Base, "(nginx") {
			t.Errorf("%s: baseline %q without nginx", r.Figure, r.Base)
		}
	}
	if last := rows[len(rows)-1]; last.Figure != "errors" || last.Met != "NO" {
		t.Errorf("handshake errors row: %+v", last)
	}
}
