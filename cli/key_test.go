package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/llorch/llorch/router/keys"
)

// `llorch key new` writes the entry and prints the secret once; the file
// holds only its digest; `llorch key list` never shows a secret; disable
// and rm change the file.
func TestKeyNewListDisableRemove(t *testing.T) {
	f := filepath.Join(t.TempDir(), "keys.yaml")
	var out bytes.Buffer
	st := &keyStore{}
	if rc := keyNew(st, []string{"--file", f, "--name", "team-a", "--models", "llama-*, qwen-*", "--rpm", "600", "--tpm", "200000", "--expires", "720h"}, &out); rc != 0 {
		t.Fatalf("key new: rc %d", rc)
	}
	m := regexp.MustCompile(`secret \(shown once[^)]*\): (llk_\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no secret printed:\n%s", out.String())
	}
	secret := m[1]
	b, _ := os.ReadFile(f)
	if strings.Contains(string(b), secret) || !strings.Contains(string(b), keys.DigestOf(secret)) {
		t.Fatalf("the file must hold the digest, not the secret:\n%s", b)
	}
	if info, _ := os.Stat(f); info.Mode().Perm() != 0o600 {
		t.Fatalf("keys file mode %v", info.Mode().Perm())
	}
	kf, err := keys.ReadFile(f)
	if err != nil || len(kf.Keys) != 1 {
		t.Fatal(err)
	}
	k := kf.Keys[0]
	if k.RPM != 600 || k.TPM != 200000 || len(k.Models) != 2 || k.Models[1] != "qwen-*" || k.Expires == nil {
		t.Fatalf("entry %+v", k)
	}
	set, _ := keys.NewSet(kf.Keys)
	if got, ok := set.Lookup(secret); !ok || got.Name != "team-a" {
		t.Fatal("the printed secret does not match the entry")
	}
	if rc := keyNew(&keyStore{}, []string{"--file", f, "--name", "team-a"}, &out); rc == 0 {
		t.Fatal("a second team-a was accepted")
	}
	var list bytes.Buffer
	all, _ := (&keyStore{file: f}).read()
	printKeys(&list, all)
	fp := keys.DigestOf(secret)[7:13]
	if strings.Contains(list.String(), secret) || !strings.Contains(list.String(), fp) || !strings.Contains(list.String(), "200000") {
		t.Fatalf("list:\n%s", list.String())
	}
	if rc := runKey([]string{"disable", "team-a", "--file", f}); rc != 0 {
		t.Fatal("disable")
	}
	if kf, _ := keys.ReadFile(f); !kf.Keys[0].Disabled {
		t.Fatal("not disabled")
	}
	if rc := runKey([]string{"rm", "team-a", "--file", f}); rc != 0 {
		t.Fatal("rm")
	}
	if kf, _ := keys.ReadFile(f); len(kf.Keys) != 0 {
		t.Fatal("not removed")
	}
}
