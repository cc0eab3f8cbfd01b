package catalog

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/ggufgen"
)

func writeModel(t *testing.T, path string, seed uint64) {
	t.Helper()
	o := ggufgen.DefaultOptions()
	o.Seed = seed
	if err := ggufgen.Write(path, o); err != nil {
		t.Fatal(err)
	}
}

func sha(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func names(es []Entry) string {
	var n []string
	for _, e := range es {
		n = append(n, e.Name)
	}
	return strings.Join(n, ",")
}

func TestScanAddRemoveRename(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "alpha.gguf")
	writeModel(t, a, 1)
	if err := os.MkdirAll(filepath.Join(dir, "team", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(dir, "team", "beta.gguf")
	writeModel(t, b, 2)
	// An HF-style directory and things that are not models.
	hf := filepath.Join(dir, "qwen-hf")
	os.MkdirAll(hf, 0o755)
	os.WriteFile(filepath.Join(hf, "config.json"), []byte(`{"model_type":"qwen2"}`), 0o644)
	os.WriteFile(filepath.Join(hf, "model.safetensors"), make([]byte, 1000), 0o644)
	os.WriteFile(filepath.Join(dir, "README.txt"), []byte("hi"), 0o644)
	os.WriteFile(filepath.Join(dir, "team", "x", "deep.gguf"), []byte("too deep"), 0o644)

	s := NewScanner(dir)
	es, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(es); got != "alpha,beta,qwen-hf" {
		t.Fatalf("names = %s", got)
	}
	if es[0].Digest != sha(t, a) || es[1].Digest != sha(t, b) || es[0].Format != "gguf" || es[2].Format != "hf" {
		t.Errorf("entries: %+v", es)
	}
	if es[2].Size != int64(len(`{"model_type":"qwen2"}`))+1000 {
		t.Errorf("hf size = %d", es[2].Size)
	}
	if es[0].Digest == es[1].Digest {
		t.Error("different seeds, same digest")
	}

	// Rename: the name follows the file, the digest stays, the old cache
	// entry goes.
	a2 := filepath.Join(dir, "alpha-v2.gguf")
	if err := os.Rename(a, a2); err != nil {
		t.Fatal(err)
	}
	es, _ = s.Scan()
	if got := names(es); got != "alpha-v2,beta,qwen-hf" || es[0].Digest != sha(t, a2) {
		t.Fatalf("after rename: %s %+v", got, es[0])
	}
	if n := s.cachedDigests(); n != 3 {
		t.Errorf("cache holds %d digests, want 3 (renamed file's old path dropped)", n)
	}

	// Remove one; change the content of another (new mtime) → new digest.
	os.Remove(b)
	writeModel(t, a2, 7)
	later := time.Now().Add(2 * time.Second)
	os.Chtimes(a2, later, later)
	es, _ = s.Scan()
	if got := names(es); got != "alpha-v2,qwen-hf" {
		t.Fatalf("after remove: %s", got)
	}
	if es[0].Digest != sha(t, a2) {
		t.Error("changed file kept its old digest")
	}
}

// A rescan of unchanged files uses the cache: prove it by corrupting the
// cache's digest and seeing it survive (it would be recomputed otherwise).
func TestDigestCached(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.gguf")
	writeModel(t, p, 1)
	s := NewScanner(dir)
	if _, err := s.Scan(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	c := s.cache[p]
	c.digest = "cached"
	s.cache[p] = c
	s.mu.Unlock()
	es, _ := s.Scan()
	if es[0].Digest != "cached" {
		t.Errorf("unchanged file was re-hashed: %s", es[0].Digest)
	}
}

func TestScanMissingDir(t *testing.T) {
	_, err := NewScanner(filepath.Join(t.TempDir(), "nope")).Scan()
	if err == nil || !strings.Contains(err.Error(), "read model dir") {
		t.Fatalf("err = %v", err)
	}
}

func TestAttributes(t *testing.T) {
	got := Attributes([]Entry{
		{Name: "llama-3.1-8b", Size: 4920000000, Digest: "0123456789abcdef0123"},
		{Name: "tiny", Size: 534368, Digest: "ffeeddccbbaa99887766"},
	})
	want := map[string]string{
		"models":                    "llama-3.1-8b,tiny",
		"models.count":              "2",
		"model.llama-3_1-8b.size":   "4920000000",
		"model.llama-3_1-8b.digest": "0123456789ab",
		"model.tiny.size":           "534368",
		"model.tiny.digest":         "ffeeddccbbaa",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("attributes\n got %v\nwant %v", got, want)
	}
}

func TestCompactRoundTripAndLimits(t *testing.T) {
	es := []Entry{{Name: "b", Size: 2, Digest: "bbbbbbbbbbbbbbbb"}, {Name: "a:x", Size: 1, Digest: "aaaaaaaaaaaaaaaa"}}
	s := EncodeCompact(es)
	if s != "a_x:1:aaaaaaaaaaaa;b:2:bbbbbbbbbbbb" {
		t.Fatalf("compact = %q", s)
	}
	back, left := DecodeCompact(s)
	if left != 0 || len(back) != 2 || back[0].Name != "a_x" || back[1].Size != 2 || back[1].Digest != "bbbbbbbbbbbb" {
		t.Errorf("decode: %+v %d", back, left)
	}

	// Too long with digests: names only.
	var many []Entry
	for i := 0; i < 20; i++ {
		many = append(many, Entry{Name: fmt.Sprintf("model-%02d", i), Size: 1 << 40, Digest: strings.Repeat("d", 64)})
	}
	s = EncodeCompact(many)
	if strings.Contains(s, ":") || len(s) > MaxCompact {
		t.Errorf("names-only form: %q", s)
	}
	if back, left := DecodeCompact(s); len(back) != 20 || left != 0 {
		t.Errorf("names-only decode: %d %d", len(back), left)
	}

	// Too many names: truncated with a count of what was left out.
	many = nil
	for i := 0; i < 100; i++ {
		many = append(many, Entry{Name: fmt.Sprintf("a-rather-long-model-name-%03d", i)})
	}
	s = EncodeCompact(many)
	if len(s) > MaxCompact {
		t.Fatalf("%d bytes > %d", len(s), MaxCompact)
	}
	back, left = DecodeCompact(s)
	if len(back)+left != 100 || left == 0 {
		t.Errorf("truncated: kept %d, left out %d (want sum 100): %q", len(back), left, s)
	}
}

func TestScanCachedHashesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.gguf")
	writeModel(t, p, 1)
	s := NewScanner(dir)
	es, err := s.ScanCached()
	if err != nil || len(es) != 1 || es[0].Digest != "" || es[0].Size == 0 {
		t.Fatalf("cached scan before hashing: %+v %v", es, err)
	}
	if _, err := s.Scan(); err != nil {
		t.Fatal(err)
	}
	es, _ = s.ScanCached()
	if es[0].Digest != sha(t, p) {
		t.Errorf("cached scan after hashing: %+v", es[0])
	}
}
