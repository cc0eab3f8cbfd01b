package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/ggufgen"
)

func TestGenModelMatchesLibrary(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "cli.gguf")
	var so, se bytes.Buffer
	if rc := genModel([]string{"-o", out, "-type", "q8_0", "-embd", "128", "-heads", "8", "-kv-heads", "2", "-stop-after", "0", "-seed", "7"}, &so, &se); rc != 0 {
		t.Fatalf("rc %d: %s", rc, se.String())
	}
	o := ggufgen.DefaultOptions()
	o.Type, o.Embd, o.Heads, o.KVHeads, o.StopAfter, o.Seed = ggufgen.Q8_0, 128, 8, 2, 0, 7
	lib := filepath.Join(dir, "lib.gguf")
	if err := ggufgen.Write(lib, o); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(lib)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("gen-model output (%d bytes) differs from ggufgen.Write (%d bytes)", len(a), len(b))
	}
	if !strings.Contains(so.String(), "q8_0") {
		t.Errorf("stdout %q does not report the type", so.String())
	}
}

func TestGenModelBadInput(t *testing.T) {
	for args, want := range map[string]string{
		"":                       "-o FILE is required",
		"-o x.gguf -type q4":     "-type",
		"-o x.gguf -heads 5":     "multiple of heads",
		"-o /nonexistent/x.gguf": "create temp file",
	} {
		var so, se bytes.Buffer
		rc := genModel(strings.Fields(args), &so, &se)
		if rc == 0 || !strings.Contains(se.String(), want) {
			t.Errorf("%q: rc %d, stderr %q, want it to mention %q", args, rc, se.String(), want)
		}
	}
}
