// Command testreport turns `go test -json` into what `make test` shows: one
// line per package, the output of failed tests, and at the end a table of
// every skipped test with its reason and, for integration tests skipped by
// internal/testenv, the command that would enable them. A skip is never
// silent. It exits 1 when a test, a package or a build failed.
//
//	go test -json ./... | go run ./internal/testreport [-show REGEXP] [-name PHASE]
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
)

func main() {
	show := flag.String("show", "", "also print, as they arrive, test output lines matching this regexp")
	name := flag.String("name", "tests", "what this run is called in the summary")
	skips := flag.String("skips", "", "append the skip table's rows to this file (tab-separated)")
	flag.Parse()
	var re *regexp.Regexp
	if *show != "" {
		var err error
		if re, err = regexp.Compile(*show); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: -show: %v\n", err)
			os.Exit(2)
		}
	}
	r := newReport(os.Stdout, re)
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
		os.Exit(2)
	}
	r.summary(*name)
	if *skips != "" {
		if err := appendSkips(*skips, r.skipped); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
			os.Exit(2)
		}
	}
	if r.failed() {
		os.Exit(1)
	}
}

func appendSkips(path string, rows []skipRow) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, s := range rows {
		if _, err := io.WriteString(f, s.Package+"\t"+s.Test+"\t"+s.Reason+"\t"+s.Enable+"\n"); err != nil {
			return err
		}
	}
	return nil
}
