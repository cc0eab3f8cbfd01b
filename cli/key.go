package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/router/keys"
)

func init() {
	Register(Command{Name: "key", Summary: "make, list, disable and remove per-team API keys", Run: runKey})
}

const keyUsage = `usage:
  llorch key new --name NAME [--models GLOBS] [--rpm N] [--tpm N] [--concurrent N]
                 [--priority interactive|batch] [--expires RFC3339|DURATION] [where]
      add a key and print its secret, once (only its SHA-256 digest is stored)
  llorch key list [where]            names, fingerprints, limits; never secrets
  llorch key disable|enable NAME [where]
  llorch key rm NAME [where]
where: --file PATH (default $LLORCH_KEYS_FILE) or --consul-prefix PREFIX
       (a Consul KV prefix; CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN[_FILE] apply)
`

// keyStore is where the keys live: a file or a Consul KV prefix.
type keyStore struct {
	file, prefix string
	kv           *consulapi.KV
}

func (s *keyStore) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.file, "file", os.Getenv("LLORCH_KEYS_FILE"), "keys file (YAML, or JSON for a .json name)")
	fs.StringVar(&s.prefix, "consul-prefix", "", "Consul KV prefix instead of a file (e.g. llorch/keys/)")
}

func (s *keyStore) open() error {
	switch {
	case s.prefix != "":
		c, err := consulapi.NewClient(consulapi.DefaultConfig())
		if err != nil {
			return err
		}
		s.kv = c.KV()
	case s.file == "":
		return errors.New("key: give --file (or set LLORCH_KEYS_FILE) or --consul-prefix")
	}
	return nil
}

func (s *keyStore) read() ([]keys.Key, error) {
	if s.kv == nil {
		f, err := keys.ReadFile(s.file)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return f.Keys, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pairs, _, err := s.kv.List(s.prefix, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul %s: %w", s.prefix, err)
	}
	var out []keys.Key
	for _, p := range pairs {
		if strings.HasSuffix(p.Key, "/") {
			continue
		}
		var k keys.Key
		if err := yaml.Unmarshal(p.Value, &k); err != nil {
			return nil, fmt.Errorf("consul %s: %w", p.Key, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// write stores the whole set (file) or the changed key (Consul; del
// removes it).
func (s *keyStore) write(all []keys.Key, changed *keys.Key, del bool) error {
	if _, err := keys.NewSet(all); err != nil {
		return err
	}
	if s.kv == nil {
		return keys.WriteFile(s.file, keys.File{Keys: all})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := (&consulapi.WriteOptions{}).WithContext(ctx)
	path := strings.TrimSuffix(s.prefix, "/") + "/" + changed.Name
	if del {
		_, err := s.kv.Delete(path, w)
		return err
	}
	b, err := yaml.Marshal(changed)
	if err != nil {
		return err
	}
	_, err = s.kv.Put(&consulapi.KVPair{Key: path, Value: b}, w)
	return err
}

func runKey(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, keyUsage)
		return 2
	}
	var st keyStore
	switch args[0] {
	case "new":
		return keyNew(&st, args[1:], os.Stdout)
	case "list":
		fs := flag.NewFlagSet("key list", flag.ContinueOnError)
		st.flags(fs)
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if err := st.open(); err != nil {
			return usageErr(err)
		}
		all, err := st.read()
		if err != nil {
			return fail(err)
		}
		printKeys(os.Stdout, all)
		return 0
	case "disable", "enable", "rm":
		fs := flag.NewFlagSet("key "+args[0], flag.ContinueOnError)
		st.flags(fs)
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			return usageErr(fmt.Errorf("key %s: name the key first: llorch key %s NAME [--file PATH]", args[0], args[0]))
		}
		name := args[1]
		if err := fs.Parse(args[2:]); err != nil {
			return 2
		}
		if err := st.open(); err != nil {
			return usageErr(err)
		}
		all, err := st.read()
		if err != nil {
			return fail(err)
		}
		i := indexKey(all, name)
		if i < 0 {
			return fail(fmt.Errorf("key %s: no key named %q", args[0], name))
		}
		k := all[i]
		if args[0] == "rm" {
			all = append(all[:i], all[i+1:]...)
		} else {
			k.Disabled = args[0] == "disable"
			all[i] = k
		}
		if err := st.write(all, &k, args[0] == "rm"); err != nil {
			return fail(err)
		}
		fmt.Printf("key %s: %s done (routers pick it up within a second, or at once on SIGHUP)\n", name, args[0])
		return 0
	}
	fmt.Fprint(os.Stderr, keyUsage)
	return 2
}

func indexKey(all []keys.Key, name string) int {
	for i := range all {
		if all[i].Name == name {
			return i
		}
	}
	return -1
}

func keyNew(st *keyStore, args []string, out io.Writer) int {
	fs := flag.NewFlagSet("key new", flag.ContinueOnError)
	st.flags(fs)
	var k keys.Key
	models := fs.String("models", "", "comma-separated model globs the key may use (empty: every model)")
	expires := fs.String("expires", "", "when the key stops working: an RFC 3339 time or a duration from now (720h)")
	fs.StringVar(&k.Name, "name", "", "the key's name (a-z, 0-9, . _ -), as logs, metrics and /v2/usage show it")
	fs.StringVar(&k.Priority, "priority", "", "admission class: interactive (default) or batch")
	fs.IntVar(&k.RPM, "rpm", 0, "requests per minute (0: no limit)")
	fs.IntVar(&k.TPM, "tpm", 0, "prompt + completion tokens per minute (0: no limit)")
	fs.IntVar(&k.Concurrent, "concurrent", 0, "requests at once (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if k.Name == "" {
		return usageErr(errors.New("key new: --name is required"))
	}
	for _, m := range strings.Split(*models, ",") {
		if m = strings.TrimSpace(m); m != "" {
			k.Models = append(k.Models, m)
		}
	}
	if *expires != "" {
		t, err := time.Parse(time.RFC3339, *expires)
		if err != nil {
			d, derr := time.ParseDuration(*expires)
			if derr != nil || d <= 0 {
				return usageErr(fmt.Errorf("key new: --expires %q: want an RFC 3339 time or a positive duration", *expires))
			}
			t = time.Now().Add(d).Truncate(time.Second)
		}
		t = t.UTC()
		k.Expires = &t
	}
	if err := st.open(); err != nil {
		return usageErr(err)
	}
	all, err := st.read()
	if err != nil {
		return fail(err)
	}
	if indexKey(all, k.Name) >= 0 {
		return fail(fmt.Errorf("key new: a key named %q exists (llorch key rm %s first to replace it)", k.Name, k.Name))
	}
	secret, err := keys.NewSecret()
	if err != nil {
		return fail(err)
	}
	k.Digest = keys.DigestOf(secret)
	all = append(all, k)
	if err := st.write(all, &k, false); err != nil {
		return fail(err)
	}
	where := st.file
	if st.prefix != "" {
		where = "consul:" + st.prefix
	}
	fmt.Fprintf(out, "key %s (fingerprint %s) added to %s\n", k.Name, k.Fingerprint(), where)
	fmt.Fprintf(out, "secret (shown once; it is not stored anywhere): %s\n", secret)
	return 0
}

func printKeys(w io.Writer, all []keys.Key) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tFINGERPRINT\tMODELS\tPRIORITY\tRPM\tTPM\tCONCURRENT\tEXPIRES\tSTATE")
	lim := func(n int) string {
		if n == 0 {
			return "-"
		}
		return strconv.Itoa(n)
	}
	for _, k := range all {
		models, prio, exp, state := "*", k.Priority, "-", "enabled"
		if len(k.Models) > 0 {
			models = strings.Join(k.Models, ",")
		}
		if prio == "" {
			prio = "interactive"
		}
		if k.Expires != nil {
			exp = k.Expires.UTC().Format(time.RFC3339)
			if !time.Now().Before(*k.Expires) {
				state = "expired"
			}
		}
		if k.Disabled {
			state = "disabled"
		}
		fp := "?"
		if len(k.Digest) >= len("sha256:")+6 {
			fp = k.Fingerprint()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Name, fp, models, prio, lim(k.RPM), lim(k.TPM), lim(k.Concurrent), exp, state)
	}
	tw.Flush()
}
