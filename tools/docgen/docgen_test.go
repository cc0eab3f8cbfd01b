package docgen

import (
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/llorch/llorch/home"
	"github.com/llorch/llorch/router/keys"
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
		t.Fatalf("%v (generate it: go test ./tools/docgen -update)", err)
	}
	if string(want) != got {
		t.Fatalf("docs/configuration.md is out of date with the code: run go test ./tools/docgen -update")
	}
	for _, must := range []string{"`LLORCH_ADDR`", "`consul.token_file`", "`gpus`", "`pools[].model`"} {
		if !strings.Contains(got, must) {
			t.Errorf("reference lacks %s", must)
		}
	}
}

// Every LLORCH_* variable the code, the scripts or the makefile read is in
// the reference (test files excepted: their variables are the tests' own).
func TestEveryEnvironmentVariableDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`\bLLORCH_[A-Z0-9_]*[A-Z0-9]\b`)
	seen := 0
	err = filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); n == ".git" || n == "bin" || n == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		if !(strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") || strings.HasSuffix(p, ".sh") || d.Name() == "GNUmakefile") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, v := range name.FindAllString(string(b), -1) {
			seen++
			if !strings.Contains(string(doc), v) {
				t.Errorf("%s reads %s, which docs/configuration.md does not mention (add it to tools/docgen)", p, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 20 {
		t.Fatalf("found only %d variable uses; the scan is broken", seen)
	}
}

// The home flags in the reference are the ones the command parses.
func TestHomeFlagsComeFromTheCommand(t *testing.T) {
	names := map[string]bool{}
	for _, f := range HomeFlags() {
		names[f.Name] = true
	}
	for _, want := range []string{"model", "engine", "name", "slots", "ctx", "engine-bin", "config", "state-dir", "addr"} {
		if !names[want] {
			t.Errorf("home flag --%s missing from the reference", want)
		}
	}
}

// The example config in the reference parses (unknown keys would fail).
func TestHomeExampleParses(t *testing.T) {
	got, err := Configuration()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(got[strings.Index(got, "## Home profile config file"):])
	if m == nil {
		t.Fatal("no yaml example")
	}
	p := filepath.Join(t.TempDir(), "home.yaml")
	os.WriteFile(p, []byte(m[1]), 0o600)
	c, err := home.LoadConfig(p)
	if err != nil || len(c.Pools) != 1 || c.Pools[0].Slots != 2 {
		t.Fatalf("example: %+v %v", c, err)
	}
}

// Relative links between the docs (and to files in the tree) resolve.
func TestDocLinksResolve(t *testing.T) {
	docs, _ := filepath.Glob("../../docs/*.md")
	if len(docs) < 6 {
		t.Fatalf("found %d docs", len(docs))
	}
	link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
	for _, d := range docs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(d), target)); err != nil {
				t.Errorf("%s links to %s, which does not exist", filepath.Base(d), target)
			}
		}
	}
}

// The keys file example in the reference parses as a keys file.
func TestKeysExampleParses(t *testing.T) {
	got, err := Configuration()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(got[strings.Index(got, "## API keys file"):])
	if m == nil {
		t.Fatal("no keys example")
	}
	f, err := keys.ParseFile([]byte(m[1]))
	if err != nil || len(f.Keys) != 1 || f.Keys[0].TPM != 200000 {
		t.Fatalf("keys example: %+v %v", f, err)
	}
}
