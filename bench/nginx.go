package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// debianNginx is where Debian's package puts nginx; /usr/sbin is often not
// on a non-root PATH, so it is looked at even when PATH misses it.
const debianNginx = "/usr/sbin/nginx"

// lookNginx finds an installed nginx: on PATH, else Debian's path.
func lookNginx() (string, error) {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	if st, err := os.Stat(debianNginx); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return debianNginx, nil
	}
	return "", errors.New("nginx is not installed")
}

// errNoNginx is why a run has no nginx baseline; main prints it once and
// every nginx column then reads "no nginx".
var errNoNginx = errors.New("nginx not installed and not root to install it (sudo scripts/install-deps.sh installs it)")

// findNginx returns nginx's path. When it is missing and the bench runs as
// root it installs Debian's package first (install); otherwise the
// baseline is missing, which errNoNginx says, and the run goes on without
// it.
func findNginx(look func() (string, error), root bool, install func() error) (string, error) {
	if p, err := look(); err == nil {
		return p, nil
	}
	if !root {
		return "", errNoNginx
	}
	fmt.Println("  nginx: not installed; installing Debian's package (apt-get) for the baseline")
	if err := install(); err != nil {
		return "", fmt.Errorf("install nginx: %w", err)
	}
	p, err := look()
	if err != nil {
		return "", fmt.Errorf("nginx still missing after apt-get install: %w", err)
	}
	return p, nil
}

// installNginx installs Debian's nginx as scripts/install-deps.sh does:
// a policy-rc.d answering 101 keeps the package's service from starting
// (the bench runs its own on free ports), and is removed after unless one
// was there before.
func installNginx() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const prc = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(prc); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(prc, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return fmt.Errorf("write %s: %w", prc, err)
		}
		defer os.Remove(prc)
	}
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "nginx"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, lastLines(string(out), 5))
		}
	}
	return nil
}

// lastLines is the tail of a command's output, for an error message.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// nginxServer is one listener of the baseline nginx and where it proxies.
type nginxServer struct {
	listen   int  // port on 127.0.0.1
	tlsIn    bool // listen with ssl (the bench certificate)
	upstream int  // port on 127.0.0.1
	tlsOut   bool // proxy_pass https://, verifying the engine against the bench CA
}

// nginxConf is the operators' baseline: keepalive upstreams, HTTP/1.1 to
// the upstream, no buffering, and an access line per request (to a file,
// buffered 64k) since the router writes one too. TLS to an upstream is
// verified (proxy_ssl_verify on, the bench CA, the certificate's host
// name) with sessions reused, as the router verifies and reuses.
func nginxConf(dir string, servers []nginxServer, tf *tlsFiles) string {
	var b strings.Builder
	for i, s := range servers {
		scheme, ssl, listen := "http", "", ""
		if s.tlsIn {
			listen = " ssl"
			fmt.Fprintf(&b, "\n  # server %d: TLS from the client", i)
		}
		if s.tlsOut {
			scheme = "https"
			ssl = fmt.Sprintf(`
      proxy_ssl_trusted_certificate %s;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;`, tf.CA)
		}
		fmt.Fprintf(&b, `
  upstream up%d { server 127.0.0.1:%d; keepalive 64; }
  server {
    listen 127.0.0.1:%d%s;%s
    location / {
      proxy_pass %s://up%d;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 60s;%s
    }
  }`, i, s.upstream, s.listen, listen, certLines(s.tlsIn, tf), scheme, i, ssl)
	}
	return fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log %[1]s/nginx-access.log combined buffer=64k;
  keepalive_requests 100000;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
%[2]s
}
`, dir, b.String())
}

func certLines(tlsIn bool, tf *tlsFiles) string {
	if !tlsIn {
		return ""
	}
	return fmt.Sprintf(`
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.2 TLSv1.3;`, tf.Cert, tf.Key)
}

// startNginx runs nginx (installing it when root and missing) with the
// plain listeners for the fast, streaming and slow upstreams and, when the
// bench has certificates, the TLS listeners of the TLS section.
func (e *env) startNginx() error {
	bin, err := findNginx(lookNginx, os.Geteuid() == 0, installNginx)
	if err != nil {
		return err
	}
	e.nFast, e.nStream, e.nSlow = freePort(), freePort(), freePort()
	servers := []nginxServer{{listen: e.nFast, upstream: e.uPort}, {listen: e.nStream, upstream: e.sPort}, {listen: e.nSlow, upstream: e.wPort}}
	if e.tls != nil {
		e.nTLSIn, e.nTLSOut, e.nTLSBoth = freePort(), freePort(), freePort()
		servers = append(servers,
			nginxServer{listen: e.nTLSIn, tlsIn: true, upstream: e.uPort},
			nginxServer{listen: e.nTLSOut, upstream: e.tuPort, tlsOut: true},
			nginxServer{listen: e.nTLSBoth, tlsIn: true, upstream: e.tuPort, tlsOut: true})
	}
	cf := filepath.Join(e.dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(nginxConf(e.dir, servers, e.tls)), 0o644); err != nil {
		return err
	}
	p, err := start("nginx", nil, bin, "-c", cf, "-p", e.dir, "-g", "daemon off;")
	if err != nil {
		return err
	}
	if err := waitHTTP("http://"+addr(e.nFast)+"/v1/models", 10*time.Second); err != nil {
		p.stop() // a baseline that does not answer is no baseline: e.nginx stays nil
		return fmt.Errorf("%w (see %s/nginx-error.log)", err, e.dir)
	}
	e.nginx = p
	return nil
}
