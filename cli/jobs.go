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
	"github.com/llorch/llorch/vramest"
)

func init() {
	Register(Command{Name: "jobs", Summary: "render, run, inspect and stop engine pools as Nomad jobs", Run: runJobs})
	Register(Command{Name: "estimate", Summary: "estimate an engine's VRAM for a GGUF model, part by part", Run: runEstimate})
}

const jobsUsage = `usage: llorch jobs <render|run|status|stop> [flags]

  render  print the Nomad job ({"Job": ...} JSON) for a pool
  run     check some node holds the model, then register the job
  status  show a pool's job and allocations
  stop    deregister a pool's job (-purge to forget it)

A pool comes from -f pool.yaml or from flags. Nomad is reached through
NOMAD_ADDR / NOMAD_TOKEN, as the nomad CLI does.
`

func runJobs(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, jobsUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch sub {
	case "render", "run":
		spec, est, err := poolFromArgs(sub, args)
		if err != nil {
			return usageErr(err)
		}
		if sub == "render" {
			b, err := jobs.RenderJSON(jobs.Render(spec))
			if err != nil {
				return fail(err)
			}
			if est != nil {
				fmt.Fprintf(os.Stderr, "VRAM estimate used for the constraint:\n%s", est.Table())
			}
			os.Stdout.Write(b)
			return 0
		}
		c, err := jobs.NewClient()
		if err != nil {
			return fail(err)
		}
		resp, err := c.Run(ctx, spec)
		if err != nil {
			if errors.Is(err, jobs.ErrModelNotAvailable) {
				fmt.Fprintln(os.Stderr, "llorch jobs run:", err)
				return 3
			}
			return fail(err)
		}
		fmt.Printf("registered pool %s (evaluation %s)\n", spec.Name, resp.EvalID)
		return 0
	case "status", "stop":
		fs := flag.NewFlagSet("jobs "+sub, flag.ContinueOnError)
		purge := fs.Bool("purge", false, "stop: also remove the job from Nomad's history")
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() != 1 {
			return usageErr(fmt.Errorf("jobs %s: want one pool name", sub))
		}
		c, err := jobs.NewClient()
		if err != nil {
			return fail(err)
		}
		if sub == "stop" {
			eval, err := c.Stop(ctx, fs.Arg(0), *purge)
			if err != nil {
				return fail(err)
			}
			fmt.Printf("stopped pool %s (evaluation %s)\n", fs.Arg(0), eval)
			return 0
		}
		st, err := c.Status(ctx, fs.Arg(0))
		if err != nil {
			return fail(err)
		}
		printStatus(os.Stdout, st)
		return 0
	}
	fmt.Fprint(os.Stderr, jobsUsage)
	return 2
}

func poolFromArgs(sub string, args []string) (jobs.PoolSpec, *vramest.Estimate, error) {
	fs := flag.NewFlagSet("jobs "+sub, flag.ContinueOnError)
	file := fs.String("f", "", "pool spec file (YAML or JSON); flags below are ignored when set")
	var s jobs.PoolSpec
	fs.StringVar(&s.Name, "name", "", "pool name (Nomad job ID)")
	fs.StringVar(&s.Model, "model", "", "model path on the nodes")
	fs.StringVar(&s.ModelName, "model-name", "", "name clients use (default: file base name)")
	fs.StringVar(&s.Engine, "engine", "llamacpp", "engine: llamacpp, vllm, ollama, sglang, tgi")
	fs.IntVar(&s.Replicas, "replicas", 1, "replicas")
	fs.IntVar(&s.Ctx, "ctx", 0, "context per slot")
	fs.IntVar(&s.Slots, "slots", 0, "parallel slots per replica")
	fs.IntVar(&s.GPUs, "gpus", 0, "GPUs per replica")
	fs.IntVar(&s.VRAMMiB, "vram-mib", 0, "VRAM per GPU (default: estimated from the model if readable here)")
	dc := fs.String("datacenters", "*", "comma-separated datacenters")
	fs.BoolVar(&s.DistinctHosts, "distinct-hosts", false, "one replica per node")
	if err := fs.Parse(args); err != nil {
		return jobs.PoolSpec{}, nil, err
	}
	if *file != "" {
		spec, err := jobs.LoadSpec(*file)
		if err != nil {
			return jobs.PoolSpec{}, nil, err
		}
		est, err := jobs.ResolveVRAM(&spec)
		return spec, est, err
	}
	s.Datacenters = strings.Split(*dc, ",")
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

func runEstimate(args []string) int {
	fs := flag.NewFlagSet("estimate", flag.ContinueOnError)
	var p vramest.Params
	fs.StringVar(&p.Engine, "engine", "llamacpp", "engine: llamacpp or ollama")
	fs.IntVar(&p.Ctx, "ctx", 0, "context per slot (default: the model's)")
	fs.IntVar(&p.Slots, "slots", 1, "parallel slots")
	fs.StringVar(&p.KVType, "kv-type", "f16", "KV cache type: f16, f32, q8_0")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		return usageErr(errors.New("usage: llorch estimate [flags] model.gguf"))
	}
	e, err := vramest.FromFile(fs.Arg(0), p)
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(e, "", "  ")
		fmt.Println(string(b))
		return 0
	}
	fmt.Print(e.Table())
	return 0
}

func usageErr(err error) int {
	fmt.Fprintln(os.Stderr, "llorch:", err)
	return 2
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "llorch:", err)
	return 1
}
