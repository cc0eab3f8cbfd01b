package tlsfiles_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/llorch/llorch/internal/tlsfiles"
	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

// One file holding certificate and key (what one Vault PKI template
// renders from a single issuance) serves as both; a broken replacement
// keeps the pair in use, a good one replaces it.
func TestPairCombinedFileAndReload(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	c1, k1 := ca.Issue(t, "one", "127.0.0.1")
	file := filepath.Join(t.TempDir(), "tls.pem")
	if err := os.WriteFile(file, append(append(c1, ca.PEM...), k1...), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := tlsfiles.LoadPair(file, file)
	if err != nil {
		t.Fatal(err)
	}
	if cn := p.Certificate().Leaf.Subject.CommonName; cn != "one" {
		t.Fatalf("leaf %q, want one (the CA after it is the chain)", cn)
	}
	if changed, err := p.Reload(); changed || err != nil {
		t.Errorf("unchanged files: changed=%v err=%v", changed, err)
	}
	c2, _ := ca.Issue(t, "two", "127.0.0.1")
	if err := os.WriteFile(file, append(c2, k1...), 0o600); err != nil { // key of another certificate
		t.Fatal(err)
	}
	if changed, err := p.Reload(); changed || err == nil || p.Certificate().Leaf.Subject.CommonName != "one" {
		t.Errorf("mismatched replacement: changed=%v err=%v; want an error and the old pair kept", changed, err)
	}
	c3, k3 := ca.Issue(t, "three", "127.0.0.1")
	if err := os.WriteFile(file, append(c3, k3...), 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := p.Reload(); !changed || err != nil || p.Certificate().Leaf.Subject.CommonName != "three" {
		t.Errorf("good replacement: changed=%v err=%v", changed, err)
	}
	if _, err := tlsfiles.ParseMinVersion("1.0"); err == nil {
		t.Error("TLS 1.0 accepted as a minimum")
	}
}
