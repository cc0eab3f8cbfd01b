package home

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The home config takes aliases and fallbacks in YAML's map form and
// refuses what the router would.
func TestHomeConfigAliasesAndFallbacks(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "home.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	model := filepath.Join(dir, "tiny.gguf")
	if err := os.WriteFile(model, []byte("GGUF"), 0o600); err != nil {
		t.Fatal(err)
	}
	pools := "pools:\n  - model: " + model + "\n"
	c, err := LoadConfig(write(pools + "aliases: {gpt-4o-mini: tiny}\nfallbacks: {big: [tiny, other]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Aliases["gpt-4o-mini"] != "tiny" || strings.Join(c.Fallbacks["big"], ",") != "tiny,other" {
		t.Fatalf("parsed %+v %+v", c.Aliases, c.Fallbacks)
	}
	c.StateDir = dir
	if err := c.Normalize(); err != nil {
		t.Fatalf("normalize: %v", err)
	}
	c, err = LoadConfig(write(pools + "aliases: {a: b, b: tiny}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.StateDir = dir
	if err := c.Normalize(); err == nil || !strings.Contains(err.Error(), "itself an alias") {
		t.Fatalf("an alias of an alias: %v", err)
	}
}
