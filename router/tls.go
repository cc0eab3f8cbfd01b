package router

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/internal/tlsfiles"
)

// CodeNonLoopbackPlaintext starts the error New returns for a non-loopback
// address without TLS or allow-plaintext.
const CodeNonLoopbackPlaintext = "NON_LOOPBACK_PLAINTEXT"

// routerTLS is the router's TLS material: the listener's pair and the
// client side to engines that announce TLS.
type routerTLS struct {
	listen     *tlsfiles.Pair // nil: plain HTTP
	minVersion uint16
	engine     *tls.Config    // nil: the system roots, no client certificate
	enginePair *tlsfiles.Pair // the client certificate, when mTLS
}

// loadTLS reads the files cfg names and applies the plaintext policy: a
// non-loopback address must serve TLS unless allow-plaintext says a proxy
// in front (or the network) is trusted with the tokens.
func loadTLS(cfg Config) (routerTLS, error) {
	var t routerTLS
	var err error
	if t.minVersion, err = tlsfiles.ParseMinVersion(cfg.TLSMinVersion); err != nil {
		return t, err
	}
	if cfg.TLSCertFile != "" {
		if t.listen, err = tlsfiles.LoadPair(cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			return t, fmt.Errorf("listener: %w", err)
		}
	} else if !authmin.IsLoopback(cfg.Addr) && !cfg.AllowPlaintext {
		return t, fmt.Errorf("%s: refusing to serve plain HTTP on %s: API tokens would cross the network in clear; hint: set LLORCH_TLS_CERT_FILE and LLORCH_TLS_KEY_FILE, or LLORCH_ALLOW_PLAINTEXT=true behind a TLS-terminating proxy", CodeNonLoopbackPlaintext, cfg.Addr)
	}
	if cfg.EngineCertFile != "" {
		if t.enginePair, err = tlsfiles.LoadPair(cfg.EngineCertFile, cfg.EngineKeyFile); err != nil {
			return t, fmt.Errorf("engine client certificate: %w", err)
		}
	}
	if cfg.EngineCAFile != "" || t.enginePair != nil {
		if t.engine, err = tlsfiles.ClientConfig(cfg.EngineCAFile, t.enginePair); err != nil {
			return t, fmt.Errorf("engine TLS: %w", err)
		}
	}
	return t, nil
}

// TLS reports whether the listener serves TLS.
func (rt *Router) TLS() bool { return rt.tls.listen != nil }

// Serve serves srv (from HTTPServer) on ln: over TLS, with HTTP/2 for
// clients that offer it by ALPN, when the router has a certificate; plain
// HTTP/1.1 otherwise. It returns what srv.Serve returns.
func (rt *Router) Serve(srv *http.Server, ln net.Listener) error {
	if rt.tls.listen == nil {
		return srv.Serve(ln)
	}
	srv.TLSConfig = tlsfiles.ServerConfig(rt.tls.listen, rt.tls.minVersion, nil)
	// Empty file names: the certificate comes from GetCertificate, which
	// always hands out the pair loaded last (reloads swap it).
	return srv.ServeTLS(ln, "", "")
}

// watchTLS keeps the listener's and the engine client's pairs current
// (SIGHUP or a change of the files) until ctx ends.
func (rt *Router) watchTLS(ctx context.Context, wg *sync.WaitGroup) {
	for _, w := range []struct {
		p    *tlsfiles.Pair
		what string
	}{{rt.tls.listen, "listener"}, {rt.tls.enginePair, "engine client"}} {
		if w.p == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.p.Watch(ctx, w.what, rt.log)
		}()
	}
}

// isTLSError reports whether err is a failed TLS handshake with an engine
// (an unknown authority, a name mismatch, a refused client certificate,
// or a plain-HTTP server answering a TLS hello).
func isTLSError(err error) bool {
	var unk x509.UnknownAuthorityError
	var hn x509.HostnameError
	var cinv x509.CertificateInvalidError
	var rec tls.RecordHeaderError
	var alert tls.AlertError
	var verr *tls.CertificateVerificationError
	var oe *net.OpError // the engine's alert, e.g. "certificate required"
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return true
	}
	return errors.As(err, &verr) || errors.As(err, &unk) || errors.As(err, &hn) || errors.As(err, &cinv) ||
		errors.As(err, &rec) || errors.As(err, &alert)
}
