package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// tlsFiles is the bench's throwaway PKI: one CA and one server
// certificate it signed, used by every TLS endpoint in the run (the
// router's listener, nginx's, and the TLS upstream), so no party does
// more certificate work than another.
type tlsFiles struct {
	CA, Cert, Key string
	pool          *x509.CertPool
}

// benchCertNames are the certificate's names: the router checks an engine
// by its announced address (an IP SAN), nginx's proxy_ssl_verify by a host
// name (proxy_ssl_name localhost), so the leaf carries both.
var benchCertNames = []string{"127.0.0.1", "localhost"}

// writeTLSFiles makes an ECDSA P-256 CA and a leaf for benchCertNames and
// writes ca.pem, cert.pem and key.pem (0600) into dir.
func writeTLSFiles(dir string) (*tlsFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "llorch bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "llorch bench"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range benchCertNames {
		if ip := net.ParseIP(n); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	f := &tlsFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem"), pool: x509.NewCertPool()}
	f.pool.AddCert(caCert)
	for _, w := range []struct {
		path string
		typ  string
		der  []byte
		mode os.FileMode
	}{{f.CA, "CERTIFICATE", caDER, 0o644}, {f.Cert, "CERTIFICATE", der, 0o644}, {f.Key, "EC PRIVATE KEY", kder, 0o600}} {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), w.mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", w.path, err)
		}
	}
	return f, nil
}

// newTLSClient is the load generator's HTTPS client: it verifies servers
// against the bench CA, speaks HTTP/1.1 only (what nginx's and the
// router's HTTP/1.1 paths are compared on), and offers X25519 alone so
// that Go's and OpenSSL's different default key exchanges (Go adds a
// post-quantum hybrid that nginx's OpenSSL does not have) do not decide
// the handshake comparison. keepAlive false: a fresh connection, and so a
// full handshake, per request.
func newTLSClient(conns int, pool *x509.CertPool, keepAlive bool) *http.Client {
	var protos http.Protocols
	protos.SetHTTP1(true)
	tr := &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, IdleConnTimeout: time.Minute,
		DisableCompression: true, DisableKeepAlives: !keepAlive, Protocols: &protos,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519}},
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
