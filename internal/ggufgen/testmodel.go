package ggufgen

import (
	"path/filepath"
	"testing"
)

// TestModel writes the model o describes into the test's temporary
// directory and returns its path; tests across llorch use it so none needs
// a downloaded model.
func TestModel(t testing.TB, o Options) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), o.Name+".gguf")
	if err := Write(p, o); err != nil {
		t.Fatalf("generate test model: %v", err)
	}
	return p
}
