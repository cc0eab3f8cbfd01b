package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llorch/llorch/authmin"
)

func TestTokenNew(t *testing.T) {
	f := filepath.Join(t.TempDir(), "sub", "api.token")
	if err := authmin.WriteNewTokenFile(f, false); err != nil {
		t.Fatal(err)
	}
	info, _ := os.Stat(f)
	b, _ := os.ReadFile(f)
	tok := strings.TrimSpace(string(b))
	if info.Mode().Perm() != 0o600 || len(tok) != 64 {
		t.Fatalf("mode %v, token length %d", info.Mode().Perm(), len(tok))
	}
	if err := authmin.CheckBind("0.0.0.0:8080", authmin.NewTokenSet(tok)); err != nil {
		t.Errorf("a new token must satisfy the bind policy: %v", err)
	}
	if err := authmin.WriteNewTokenFile(f, false); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("overwrite without --force: %v", err)
	}
	if err := authmin.WriteNewTokenFile(f, true); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(f)
	if string(b2) == string(b) {
		t.Error("--force did not rotate the token")
	}
}

func TestTokenCommand(t *testing.T) {
	f := filepath.Join(t.TempDir(), "api.token")
	if rc := runToken([]string{"new"}); rc != 2 {
		t.Errorf("new without --file: rc %d, want 2 (a token is never printed)", rc)
	}
	if rc := runToken([]string{"new", "--file", f}); rc != 0 {
		t.Fatalf("new: rc %d", rc)
	}
	if rc := runToken([]string{"new", "--file", f}); rc == 0 {
		t.Error("new over an existing file without --force succeeded")
	}
	if rc := runToken([]string{"fp", f}); rc != 0 {
		t.Errorf("fp: rc %d", rc)
	}
	if rc := runToken([]string{"fp", f + ".missing"}); rc == 0 {
		t.Error("fp of a missing file succeeded")
	}
	if rc := runToken([]string{"bogus"}); rc != 2 {
		t.Errorf("unknown subcommand: rc %d", rc)
	}
}
