// Package cli holds llorch's subcommands. Each subcommand lives in its own
// file and registers itself, so adding one never touches main.go.
package cli

import (
	"fmt"
	"io"
	"sort"
)

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string
	// Run gets the arguments after the subcommand name and returns the
	// process exit code.
	Run func(args []string) int
}

var commands = map[string]Command{}

// Register adds a subcommand; call it from init.
func Register(c Command) {
	if _, dup := commands[c.Name]; dup {
		panic("cli: duplicate subcommand " + c.Name)
	}
	commands[c.Name] = c
}

// Lookup finds a subcommand.
func Lookup(name string) (Command, bool) {
	c, ok := commands[name]
	return c, ok
}

// Usage prints the subcommands.
func Usage(w io.Writer) {
	fmt.Fprintln(w, "usage: llorch <command> [flags]")
	fmt.Fprintln(w, "")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].Summary)
	}
	fmt.Fprintln(w, "")
	fmt.Fprintln(w, "Started by a Nomad agent (NOMAD_PLUGIN_MAGIC_COOKIE set), llorch serves the task driver plugin.")
}
