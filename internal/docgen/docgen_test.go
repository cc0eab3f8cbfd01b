package docgen

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md")

func TestConfigurationReferenceMatchesCode(t *testing.T) {
	got, err := Configuration()
	if err != nil {
		t.Fatal(err)
	}
	const path = "../../docs/configuration.md"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (generate it: go test ./internal/docgen -update)", err)
	}
	if string(want) != got {
		t.Fatalf("docs/configuration.md is out of date with the code: run go test ./internal/docgen -update")
	}
	for _, must := range []string{"`LLORCH_ADDR`", "`consul.token_file`", "`gpus`", "`pools[].model`"} {
		if !strings.Contains(got, must) {
			t.Errorf("reference lacks %s", must)
		}
	}
}
