package main

import (
	"strings"
	"testing"
)

// A skipped integration test shows up in the table with the command that
// enables it; a failed test fails the report and shows its output.
func TestReportCollectsSkipsAndFailures(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"run","Package":"p","Test":"TestA"}`,
		`{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:9: llorch-skip: consul not found at /x | enable: scripts/build-consul.sh\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestA"}`,
		`{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:3: short mode\n"}`,
		`{"Action":"output","Package":"p","Test":"TestB","Output":"--- SKIP: TestB (0.00s)\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestB"}`,
		`{"Action":"output","Package":"p","Test":"TestC","Output":"    c_test.go:1: boom\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestC","Elapsed":0.5}`,
		`{"Action":"output","Package":"p","Output":"FAIL\tp\t0.6s\n"}`,
		`{"Action":"fail","Package":"p"}`,
	}, "\n")
	var out strings.Builder
	r := newReport(&out, nil)
	if err := r.read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	r.summary("unit")
	got := out.String()
	if !r.failed() {
		t.Error("a failed test did not fail the report")
	}
	want := []skipRow{{"p", "TestA", "consul not found at /x", "scripts/build-consul.sh"}, {"p", "TestB", "short mode", ""}}
	if len(r.skipped) != 2 || r.skipped[0] != want[0] || r.skipped[1] != want[1] {
		t.Errorf("skips %+v, want %+v", r.skipped, want)
	}
	for _, s := range []string{"c_test.go:1: boom", "SKIPPED TEST", "scripts/build-consul.sh", "FAILED p/TestC", "1 failed, 2 skipped"} {
		if !strings.Contains(got, s) {
			t.Errorf("report lacks %q:\n%s", s, got)
		}
	}
}
