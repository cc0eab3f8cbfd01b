package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llorch/llorch/jobs"
	"github.com/llorch/llorch/models/vramest"
)

func init() {
	Register(Command{Name: "jobs", Summary: "render, run, inspect and stop engine pools as Nomad jobs", Run: func(args []string) int { return jobsMain(args, os.Stdout, os.Stderr) }})
	Register(Command{Name: "estimate", Summary: "estimate an engine's VRAM for a GGUF model, part by part", Run: func(args []string) int { return estimateMain(args, os.Stdout, os.Stderr) }})
}

const jobsUsage = `usage: llorch jobs <render|run|status|stop> [flags]

  render  print the Nomad job ({"Job": ...} JSON) for a pool
  run     check some node holds the model, then register the job
  status  show a pool's job and allocations
  stop    deregister a pool's job (-purge to forget it)

A pool comes from -f pool.yaml or from flags. Nomad is reached through
NOMAD_ADDR / NOMAD_TOKEN, as the nomad CLI does.
`

func jobsMain(args []string, stdout, stderr io.Writer) int {
	usageErr := func(err error) int { fmt.Fprintln(stderr, "llorch:", err); return 2 }
	fail := func(err error) int { fmt.Fprintln(stderr, "llorch:", err); return 1 }
	if len(args) == 0 {
		fmt.Fprint(stderr, jobsUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch sub {
	case "render", "run":
		spec, est, err := poolFromArgs(sub, args, stderr)
		if err != nil {
			return usageErr(err)
		}
		if sub == "render" {
			b, err := jobs.RenderJSON(jobs.Render(spec))
			if err != nil {
				return fail(err)
			}
			if est != nil {
				fmt.Fprintf(stderr, "VRAM estimate used for the constraint:\n%s", est.Table())
			}
			stdout.Write(b)
			return 0
		}
		c, err := jobs.NewClient()
		if err != nil {
			return fail(err)
		}
		resp, err := c.Run(ctx, spec)
		if err != nil {
			if errors.Is(err, jobs.ErrModelNotAvailable) {
				fmt.Fprintln(stderr, "llorch jobs run:", err)
				return 3
			}
			return fail(err)
		}
		fmt.Fprintf(stdout, "registered pool %s (evaluation %s)\n", spec.Name, resp.EvalID)
		return 0
	case "status", "stop":
		fs := flag.NewFlagSet("jobs "+sub, flag.ContinueOnError)
		fs.SetOutput(stderr)
		purge := fs.Bool("purge", false, "stop: also remove the job from Nomad's history")
		pos, err := parseInterspersed(fs, args)
		if err != nil {
			return 2
		}
		if len(pos) != 1 {
			return usageErr(fmt.Errorf("jobs %s: want one pool name", sub))
		}
		name := pos[0]
		c, err := jobs.NewClient()
		if err != nil {
			return fail(err)
		}
		if sub == "stop" {
			eval, err := c.Stop(ctx, name, *purge)
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(stdout, "stopped pool %s (evaluation %s)\n", name, eval)
			return 0
		}
		st, err := c.Status(ctx, name)
		if err != nil {
			return fail(err)
		}
		printStatus(stdout, st)
		return 0
	}
	fmt.Fprint(stderr, jobsUsage)
	return 2
}

func poolFromArgs(sub string, args []string, stderr io.Writer) (jobs.PoolSpec, *vramest.Estimate, error) {
	fs := flag.NewFlagSet("jobs "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "pool spec file (YAML or JSON); flags below are ignored when set")
	var s jobs.PoolSpec
	fs.StringVar(&s.Name, "name", "", "pool name (Nomad job ID)")
	fs.StringVar(&s.Model, "model", "", "model path on the nodes")
	fs.StringVar(&s.ModelName, "model-name", "", "name clients use (default: file base name)")
	fs.StringVar(&s.Engine, "engine", "llamacpp", "engine: llamacpp, vllm, ollama, sglang, tgi")
	fs.IntVar(&s.Replicas, "replicas", 0, "replicas (default 1, or -min with -max)")
	minR := fs.Int("min", -1, "with -max: fewest replicas the router scales down to (0 = scale to zero; default 1)")
	fs.IntVar(&s.Max, "max", 0, "most replicas the router scales up to (0 = fixed size: -replicas)")
	fs.StringVar(&s.Idle, "idle", "", "with -max: time without requests before scaling down to -min (default 10m)")
	fs.IntVar(&s.Ctx, "ctx", 0, "context per slot")
	fs.IntVar(&s.Slots, "slots", 0, "parallel slots per replica")
	fs.IntVar(&s.GPUs, "gpus", 0, "GPUs per replica")
	fs.IntVar(&s.VRAMMiB, "vram-mib", 0, "VRAM per GPU (default: estimated from the model if readable here)")
	dc := fs.String("datacenters", "*", "comma-separated datacenters")
	fs.BoolVar(&s.DistinctHosts, "distinct-hosts", false, "one replica per node")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return jobs.PoolSpec{}, nil, err
	}
	if len(pos) > 0 {
		return jobs.PoolSpec{}, nil, fmt.Errorf("jobs %s: unexpected argument %q (the pool comes from -f FILE or flags)", sub, pos[0])
	}
	if *file != "" {
		set := ""
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "f" && set == "" {
				set = f.Name
			}
		})
		if set != "" {
			return jobs.PoolSpec{}, nil, fmt.Errorf("jobs %s: -%s and -f both given; put it in the pool file", sub, set)
		}
		spec, err := jobs.LoadSpec(*file)
		if err != nil {
			return jobs.PoolSpec{}, nil, err
		}
		est, err := jobs.ResolveVRAM(&spec)
		return spec, est, err
	}
	s.Datacenters = strings.Split(*dc, ",")
	if *minR >= 0 {
		s.Min = minR
	}
	s.Defaults()
	if err := s.Validate(); err != nil {
		return jobs.PoolSpec{}, nil, err
	}
	est, err := jobs.ResolveVRAM(&s)
	return s, est, err
}

func printStatus(w io.Writer, st jobs.Status) {
	status := ""
	if st.Job.Status != nil {
		status = *st.Job.Status
	}
	fmt.Fprintf(w, "pool %s: job %s\n", *st.Job.ID, status)
	for _, tg := range st.Job.TaskGroups {
		for _, c := range tg.Constraints {
			fmt.Fprintf(w, "  constraint %s %s %s\n", c.LTarget, c.Operand, c.RTarget)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ALLOC\tNODE\tDESIRED\tSTATUS")
	for _, a := range st.Allocs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.ID[:8], a.NodeName, a.DesiredStatus, a.ClientStatus)
	}
	tw.Flush()
}

func estimateMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("estimate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var p vramest.Params
	fs.StringVar(&p.Engine, "engine", "llamacpp", "engine: llamacpp or ollama")
	fs.IntVar(&p.Ctx, "ctx", 0, "context per slot (default: the model's)")
	fs.IntVar(&p.Slots, "slots", 1, "parallel slots")
	fs.StringVar(&p.KVType, "kv-type", "f16", "KV cache type: f16, f32, q8_0")
	fs.IntVar(&p.UBatch, "ubatch", vramest.DefaultUBatch, "physical batch (llama-server -ub)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: llorch estimate model.gguf [-ctx N] [-slots N] [-engine llamacpp|ollama] [-kv-type f16|f32|q8_0] [-json]")
		return 2
	}
	e, err := vramest.FromFile(pos[0], p)
	if err != nil {
		fmt.Fprintln(stderr, "llorch estimate:", err)
		return 1
	}
	if *asJSON {
		b, _ := json.MarshalIndent(e, "", "  ")
		fmt.Fprintln(stdout, string(b))
		return 0
	}
	fmt.Fprint(stdout, e.Table())
	return 0
}

// parseInterspersed parses flags before, between and after positional
// arguments ("llorch estimate model.gguf -ctx 4096" reads as users write
// it; Go's flag package stops at the first positional one).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func usageErr(err error) int {
	fmt.Fprintln(os.Stderr, "llorch:", err)
	return 2
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "llorch:", err)
	return 1
}
