// Package tlsfiles turns certificate, key and CA files into tls.Configs
// for llorch's servers (the router's listener, the task relay) and clients
// (the router to engines), and keeps a served certificate current: the
// files are re-read on SIGHUP and when their content changes, and the
// next handshake uses the new pair while open connections carry on.
package tlsfiles

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// watchPoll is how often Watch compares the files with what it loaded; a
// template re-render or an atomic rename is seen within it.
const watchPoll = time.Second

// Pair is a certificate and key loaded from two files, swapped atomically
// when Reload finds new content.
type Pair struct {
	CertFile, KeyFile string

	cur atomic.Pointer[loaded]
}

type loaded struct {
	cert            *tls.Certificate
	certPEM, keyPEM []byte
}

// LoadPair reads the pair; a missing, unreadable or mismatched pair is an
// error naming the files.
func LoadPair(certFile, keyFile string) (*Pair, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("tls: a certificate file and a key file are both needed")
	}
	p := &Pair{CertFile: certFile, KeyFile: keyFile}
	if _, err := p.Reload(); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload re-reads the files. It reports whether the pair changed; on an
// error the current pair stays in use.
func (p *Pair) Reload() (bool, error) {
	certPEM, err := os.ReadFile(p.CertFile)
	if err != nil {
		return false, fmt.Errorf("tls: certificate file: %w", err)
	}
	keyPEM, err := os.ReadFile(p.KeyFile)
	if err != nil {
		return false, fmt.Errorf("tls: key file: %w", err)
	}
	if old := p.cur.Load(); old != nil && bytes.Equal(old.certPEM, certPEM) && bytes.Equal(old.keyPEM, keyPEM) {
		return false, nil
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Also what a half-replaced pair (new cert, old key) looks like:
		// the next poll, after the second file lands, loads it.
		return false, fmt.Errorf("tls: %s with %s: %w", p.CertFile, p.KeyFile, err)
	}
	if c.Leaf == nil && len(c.Certificate) > 0 {
		c.Leaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	p.cur.Store(&loaded{cert: &c, certPEM: certPEM, keyPEM: keyPEM})
	return true, nil
}

// Certificate is the pair in use now.
func (p *Pair) Certificate() *tls.Certificate { return p.cur.Load().cert }

// GetCertificate is for tls.Config.GetCertificate.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return p.Certificate(), nil
}

// GetClientCertificate is for tls.Config.GetClientCertificate.
func (p *Pair) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.Certificate(), nil
}

// Watch reloads the pair on SIGHUP and whenever the files' content
// changes, until ctx ends (it owns its SIGHUP subscription until then).
// what names the pair in the log ("listener", "engine client").
func (p *Pair) Watch(ctx context.Context, what string, log hclog.Logger) {
	if p == nil {
		return
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(watchPoll)
	defer tick.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-tick.C:
		}
		changed, err := p.Reload()
		if err != nil {
			if err.Error() != lastErr { // once per distinct failure, not every second
				log.Warn("certificate re-read failed; keeping the current one", "pair", what, "error", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if changed {
			leaf := p.Certificate().Leaf
			if leaf != nil {
				log.Info("certificate reloaded", "pair", what, "subject", leaf.Subject.String(), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
			} else {
				log.Info("certificate reloaded", "pair", what)
			}
		}
	}
}

// ParseMinVersion reads "1.2" or "1.3" (the versions llorch accepts as a
// floor; older ones are broken).
func ParseMinVersion(s string) (uint16, error) {
	switch strings.TrimSpace(s) {
	case "1.2", "":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("want 1.2 or 1.3, got %q", s)
}

// CAPool reads a PEM bundle; a file with no certificate in it is an error.
func CAPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tls: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// ServerConfig serves pair at minVersion or above, offering HTTP/2 and
// HTTP/1.1 by ALPN. clientCAs non-nil: a client certificate signed by one
// of them is required.
func ServerConfig(pair *Pair, minVersion uint16, clientCAs *x509.CertPool) *tls.Config {
	c := &tls.Config{
		MinVersion:     minVersion,
		GetCertificate: pair.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if clientCAs != nil {
		c.ClientCAs = clientCAs
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c
}

// ClientConfig verifies servers against the CA bundle in caFile (empty:
// the system roots) and presents pair when non-nil (mTLS).
func ClientConfig(caFile string, pair *Pair) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := CAPool(caFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if pair != nil {
		c.GetClientCertificate = pair.GetClientCertificate
	}
	return c, nil
}
