package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/llorch/llorch/authmin"
)

func init() {
	Register(Command{Name: "token", Summary: "make an API/engine token file, or print a token file's fingerprint", Run: runToken})
}

const tokenUsage = `usage:
  llorch token new --file PATH   write a new 32-byte random token (64 hex chars), mode 0600
  llorch token fp PATH           print the token's fingerprint as logs show it (token:xxxxxx)
`

func runToken(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, tokenUsage)
		return 2
	}
	switch args[0] {
	case "new":
		fs := flag.NewFlagSet("token new", flag.ContinueOnError)
		file := fs.String("file", "", "where to write the token (required; never printed)")
		force := fs.Bool("force", false, "replace an existing file (a rotation: servers accept the old token for their grace period)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if *file == "" {
			return usageErr(errors.New("token new: --file is required (tokens are never printed or passed as flags)"))
		}
		if err := authmin.WriteNewTokenFile(*file, *force); err != nil {
			return fail(err)
		}
		b, _ := os.ReadFile(*file)
		fmt.Printf("wrote %s (%s)\n", *file, authmin.Identity(strings.TrimSpace(string(b))))
		return 0
	case "fp":
		if len(args) != 2 {
			fmt.Fprint(os.Stderr, tokenUsage)
			return 2
		}
		b, err := os.ReadFile(args[1])
		if err != nil {
			return fail(fmt.Errorf("token fp: %w", err))
		}
		fmt.Println(authmin.Identity(strings.TrimSpace(string(b))))
		return 0
	}
	fmt.Fprint(os.Stderr, tokenUsage)
	return 2
}
