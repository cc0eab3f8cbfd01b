package docgen

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	placeholder = regexp.MustCompile(`<[^>]+>`)
	codePrefix  = regexp.MustCompile(`^([A-Z_]{5,}): (.*)$`)
)

// inCode looks for s in the source, also with Go's escaped quotes undone.
func inCode(code, s string) bool {
	return strings.Contains(code, s) || strings.Contains(strings.ReplaceAll(code, `\"`, `"`), s)
}

// Every error text quoted in docs/troubleshooting.md (the ```text blocks)
// still exists in the code: the literal pieces between <placeholders> must
// appear in some non-test Go file, so a reworded message breaks this test
// instead of the doc silently lying.
func TestTroubleshootingQuotesRealMessages(t *testing.T) {
	doc, err := os.ReadFile("../../docs/troubleshooting.md")
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && (d.Name() == ".git" || d.Name() == "bin") {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return err
		}
		if strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			b, _ := os.ReadFile(p)
			src.Write(b)
		}
		return nil
	})
	code := src.String()
	blocks := regexp.MustCompile("(?s)```text\n(.*?)\n```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) < 6 {
		t.Fatalf("found %d quoted messages; the pattern is broken", len(blocks))
	}
	for _, b := range blocks {
		for _, piece := range placeholder.Split(b[1], -1) {
			piece = strings.TrimSpace(piece)
			if len(piece) < 8 {
				continue
			}
			// Messages often start with their code, formatted in from a
			// constant ("%s: ..."): check the code and the rest apart.
			if m := codePrefix.FindStringSubmatch(piece); m != nil && !inCode(code, piece) {
				if !inCode(code, `"`+m[1]+`"`) || !inCode(code, m[2]) {
					t.Errorf("docs/troubleshooting.md quotes %q, which no Go file contains", piece)
				}
				continue
			}
			if !inCode(code, piece) {
				t.Errorf("docs/troubleshooting.md quotes %q, which no Go file contains", piece)
			}
		}
	}
}
