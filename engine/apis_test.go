package engine

import (
	"slices"
	"testing"
)

func TestVersionAtLeast(t *testing.T) {
	for _, c := range []struct {
		v, min string
		want   bool
	}{
		{"0.12.0", "0.12.0", true}, {"0.11.2", "0.12.0", false}, {"0.13.1+cu128", "0.12.0", true},
		{"v0.5.0rc1", "0.5.0", true}, {"0.4.10", "0.5.0", false}, {"1.0", "0.14.0", true},
		{"", "0.1.0", false}, {"dev", "0.1.0", false}, {"0.14", "0.14.0", true},
	} {
		if got := versionAtLeast(c.v, c.min); got != c.want {
			t.Errorf("versionAtLeast(%q, %q) = %v, want %v", c.v, c.min, got, c.want)
		}
	}
}

func TestAPIsByVersion(t *testing.T) {
	has := func(a Adapter, v, path string) bool { return slices.Contains(APIsOf(a, v), path) }
	if !has(VLLM{}, "0.12.1", PathMessages) || !has(VLLM{}, "0.12.1", PathResponses) {
		t.Errorf("vLLM 0.12.1: %v", APIsOf(VLLM{}, "0.12.1"))
	}
	if has(VLLM{}, "0.9.2", PathResponses) || has(VLLM{}, "", PathMessages) {
		t.Errorf("old or unknown vLLM declares too much: %v / %v", APIsOf(VLLM{}, "0.9.2"), APIsOf(VLLM{}, ""))
	}
	if has(SGLang{}, "0.5.2", PathMessages) || !has(SGLang{}, "0.5.2", PathResponses) {
		t.Errorf("SGLang 0.5.2: %v", APIsOf(SGLang{}, "0.5.2"))
	}
	if !has(Ollama{}, "0.17.4", PathMessages) || has(Ollama{}, "0.13.0", PathMessages) {
		t.Errorf("Ollama: %v / %v", APIsOf(Ollama{}, "0.17.4"), APIsOf(Ollama{}, "0.13.0"))
	}
	if !has(LlamaCpp{}, "b11669", PathMessages) || !has(LlamaCpp{}, "", PathResponses) {
		t.Errorf("llama-server: %v", APIsOf(LlamaCpp{}, ""))
	}
	if a, b := APIsOf(VLLM{}, "0.13.0"), APIsOf(VLLM{}, "0.13.0"); !slices.Equal(a, b) {
		t.Errorf("order varies: %v vs %v", a, b)
	}
}
