package engine_test

import (
	"os"
	"strings"
	"testing"

	"github.com/llorch/llorch/engine"
)

// docs/engines.md lists every option the driver owns or treats as running
// code, per engine.
func TestOwnedOptionsDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/engines.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, name := range engine.Names() {
		r := engine.RulesFor(name)
		for _, o := range append(r.Owned, r.Code...) {
			for _, n := range append(append([]string(nil), o.Flags...), o.Env...) {
				if !strings.Contains(doc, "`"+n+"`") {
					t.Errorf("%s: %s (%s) is not in docs/engines.md", name, n, o.What)
				}
			}
		}
	}
}

func TestRulesMatch(t *testing.T) {
	for _, c := range []struct {
		engine, arg string
		owned, code bool
	}{
		{"llamacpp", "--api-key", true, false},
		{"llamacpp", "--api-key=x", true, false},
		{"llamacpp", "--host", true, false},
		{"llamacpp", "-np", true, false},
		{"llamacpp", "--api", false, false}, // llama.cpp takes no prefixes
		{"llamacpp", "-ngl", false, false},
		{"llamacpp", "value", false, false},
		{"vllm", "--trust-remote-code", false, true},
		{"vllm", "--trust-remote", false, true},
		{"vllm", "--trust_remote_code", false, true},
		{"vllm", "--api_key=1", true, false},
		{"vllm", "--max-model-len=9", true, false},
		{"vllm", "--tensor-parallel-size", false, false},
		{"sglang", "--trust-remote-code", false, true},
		{"tgi", "--trust-remote-code", false, true},
		{"tgi", "--hostname", true, false},
		{"ollama", "--host", false, false},
	} {
		o, code, found := engine.RulesFor(c.engine).Flag(c.arg)
		if found != (c.owned || c.code) || code != c.code {
			t.Errorf("%s %q: found %v code %v (%s), want owned %v code %v", c.engine, c.arg, found, code, o.What, c.owned, c.code)
		}
	}
	r := engine.RulesFor("ollama")
	if _, code, ok := r.EnvVar("OLLAMA_HOST"); !ok || code {
		t.Error("OLLAMA_HOST is not owned for ollama")
	}
	if _, code, ok := r.EnvVar("LD_PRELOAD"); !ok || !code {
		t.Error("LD_PRELOAD does not run code")
	}
	if !engine.RulesFor("tgi").SecretEnv("API_KEY") || !engine.RulesFor("sglang").SecretFlag("--api-key=x") {
		t.Error("secret options not marked secret")
	}
}
