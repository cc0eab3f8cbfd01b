package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llorch/llorch/fingerprint"
)

func init() {
	Register(Command{
		Name:    "fingerprint",
		Summary: "show the NVIDIA GPUs NVML reports (table, or --json)",
		Run: func(args []string) int {
			return runFingerprint(args, os.Stdout, os.Stderr, nvml.New())
		},
	})
}

// runFingerprint exits 0 when NVML is missing (a CPU-only node is a valid
// node), 1 when a GPU failed, 2 on bad flags.
func runFingerprint(args []string, stdout, stderr io.Writer, lib nvml.Interface) int {
	fs := flag.NewFlagSet("fingerprint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the snapshot as JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: llorch fingerprint [--json]")
		fmt.Fprintln(stderr, "Exit status: 0 ok or no NVML on this machine, 1 a GPU failed, 2 bad flags.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "llorch fingerprint: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	src := fingerprint.New(lib)
	defer src.Close()
	snap := src.Refresh()
	code := 0
	if snap.Fault != "" {
		code = 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(snap); err != nil {
			fmt.Fprintf(stderr, "llorch fingerprint: %v\n", err)
			return 1
		}
		return code
	}
	if !snap.Status.Available {
		fmt.Fprintf(stdout, "no NVIDIA GPU / NVML not available: %s\n", snap.Status.Reason)
		return 0
	}
	fmt.Fprintf(stdout, "NVIDIA driver %s, CUDA %s, %d GPU(s)\n", fpOrDash(snap.DriverVersion), fpOrDash(snap.CUDAVersion), len(snap.GPUs))
	if len(snap.GPUs) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "IDX\tDEVICE\tUUID\tNAME\tPCI BUS\tCC\tMEM TOTAL\tMEM FREE\tGPU%\tMEM%\tTEMP\tPOWER")
		for _, g := range snap.GPUs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				g.Index, g.Device, g.UUID, fpOrDash(g.Name), fpOrDash(g.PCIBusID), fpOrDash(g.ComputeCapability),
				fpOpt(g.MemoryTotalMiB, "%d MiB"), fpOpt(g.MemoryFreeMiB, "%d MiB"),
				fpOpt(g.GPUUtilPercent, "%d"), fpOpt(g.MemoryUtilPercent, "%d"), fpOpt(g.TemperatureC, "%d C"),
				fpPower(g.PowerDrawMilliW, g.PowerLimitMilliW))
		}
		tw.Flush()
	}
	if snap.Fault != "" {
		fmt.Fprintf(stderr, "GPU fault: %s\n", snap.Fault)
	}
	return code
}

func fpOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fpOpt[T any](v *T, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

func fpPower(draw, limit *uint32) string {
	switch {
	case draw == nil && limit == nil:
		return "-"
	case limit == nil:
		return fmt.Sprintf("%d W", *draw/1000)
	case draw == nil:
		return fmt.Sprintf("- / %d W", *limit/1000)
	}
	return fmt.Sprintf("%d / %d W", *draw/1000, *limit/1000)
}
