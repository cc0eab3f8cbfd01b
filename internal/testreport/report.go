package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
)

// skipMarker is internal/testenv.SkipMarker (not imported: this command
// must build without the test helpers' dependencies).
const skipMarker = "llorch-skip: "

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	Elapsed    float64
	ImportPath string // build-output / build-fail events
}

type skipRow struct{ Package, Test, Reason, Enable string }

type report struct {
	w        io.Writer
	show     *regexp.Regexp
	out      map[string][]string // package/test → its output so far
	skipped  []skipRow
	failures []string // package/test of failed tests
	badPkgs  []string // packages that failed (build or test)
	pkgs     int
	tests    map[string]int // action → count of tests
}

func newReport(w io.Writer, show *regexp.Regexp) *report {
	return &report{w: w, show: show, out: map[string][]string{}, tests: map[string]int{}}
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event: go's own messages (e.g. "go: downloading").
			fmt.Fprintln(r.w, string(line))
			continue
		}
		r.add(e)
	}
	return sc.Err()
}

func (r *report) add(e event) {
	key := e.Package + "/" + e.Test
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.w, e.Output)
	case "build-fail":
		r.badPkgs = append(r.badPkgs, e.ImportPath+" (build failed)")
	case "output":
		r.out[key] = append(r.out[key], e.Output)
		if e.Test == "" {
			// Package-level lines: "ok  pkg 1.2s", "FAIL pkg", panics,
			// and TestMain's own printing (the e2e table).
			if o := strings.TrimSpace(e.Output); o != "PASS" && o != "FAIL" && !strings.HasPrefix(o, "=== ") && !strings.HasPrefix(o, "--- ") {
				fmt.Fprint(r.w, e.Output)
			}
		} else if r.show != nil && r.show.MatchString(e.Output) {
			fmt.Fprint(r.w, e.Output)
		}
	case "skip":
		if e.Test == "" {
			delete(r.out, key)
			return // a package with no test files
		}
		r.tests["skip"]++
		r.skipped = append(r.skipped, skipReason(e.Package, e.Test, r.out[key]))
		delete(r.out, key)
	case "pass":
		if e.Test == "" {
			r.pkgs++
		} else {
			r.tests["pass"]++
		}
		delete(r.out, key)
	case "fail":
		if e.Test == "" {
			r.pkgs++
			r.badPkgs = append(r.badPkgs, e.Package)
			return
		}
		r.tests["fail"]++
		r.failures = append(r.failures, key)
		fmt.Fprintf(r.w, "--- FAIL: %s (%s, %.2fs)\n%s", e.Test, e.Package, e.Elapsed, strings.Join(r.out[key], ""))
		delete(r.out, key)
	}
}

// skipReason finds the t.Skip message in a skipped test's output: the
// testenv marker when there is one ("WHAT | enable: COMMAND"), else the
// last line go test printed for it.
func skipReason(pkg, test string, out []string) skipRow {
	row := skipRow{Package: pkg, Test: test}
	for _, l := range out {
		if i := strings.Index(l, skipMarker); i >= 0 {
			m := strings.TrimSpace(l[i+len(skipMarker):])
			row.Reason, row.Enable, _ = strings.Cut(m, " | enable: ")
			return row
		}
	}
	for i := len(out) - 1; i >= 0; i-- {
		l := strings.TrimSpace(out[i])
		if l != "" && !strings.HasPrefix(l, "--- SKIP") && !strings.HasPrefix(l, "=== ") {
			// "file_test.go:12: message"
			if _, msg, ok := strings.Cut(l, ": "); ok && strings.Contains(l[:strings.Index(l, ": ")], "_test.go:") {
				l = msg
			}
			row.Reason = l
			break
		}
	}
	if row.Reason == "" {
		row.Reason = "(no reason given)"
	}
	return row
}

func (r *report) failed() bool { return len(r.failures) > 0 || len(r.badPkgs) > 0 }

func (r *report) summary(name string) {
	fmt.Fprintf(r.w, "\n%s: %d packages, %d tests passed, %d failed, %d skipped\n", name, r.pkgs, r.tests["pass"], r.tests["fail"], r.tests["skip"])
	if len(r.skipped) > 0 {
		sort.Slice(r.skipped, func(i, j int) bool {
			a, b := r.skipped[i], r.skipped[j]
			return a.Package+"/"+a.Test < b.Package+"/"+b.Test
		})
		writeSkipTable(r.w, r.skipped)
	}
	for _, p := range r.badPkgs {
		fmt.Fprintf(r.w, "FAILED package %s\n", p)
	}
	for _, f := range r.failures {
		fmt.Fprintf(r.w, "FAILED %s\n", f)
	}
}

func writeSkipTable(w io.Writer, rows []skipRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SKIPPED TEST\tWHY\tTO ENABLE")
	for _, s := range rows {
		enable := s.Enable
		if enable == "" {
			enable = "-"
		}
		fmt.Fprintf(tw, "%s %s\t%s\t%s\n", strings.TrimPrefix(s.Package, "github.com/llorch/llorch/"), s.Test, s.Reason, enable)
	}
	tw.Flush()
}
