package cli

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/llorch/llorch/internal/ggufgen"
)

func init() {
	Register(Command{
		Name:    "gen-model",
		Summary: "write a tiny deterministic GGUF test model",
		Run:     func(args []string) int { return genModel(args, os.Stdout, os.Stderr) },
	})
}

func genModel(args []string, stdout, stderr io.Writer) int {
	d := ggufgen.DefaultOptions()
	fs := flag.NewFlagSet("gen-model", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "output file (required)")
	name := fs.String("name", d.Name, "general.name")
	seed := fs.Uint64("seed", d.Seed, "random seed; same seed and flags give the same file")
	vocab := fs.Int("vocab", d.Vocab, "vocabulary size (>= 275: 3 control + 256 byte tokens + pieces)")
	embd := fs.Int("embd", d.Embd, "embedding length")
	layers := fs.Int("layers", d.Layers, "transformer blocks")
	heads := fs.Int("heads", d.Heads, "attention heads")
	kvHeads := fs.Int("kv-heads", 0, "key/value heads (default: heads)")
	ff := fs.Int("ff", d.FF, "feed-forward length")
	ctx := fs.Int("ctx", d.Ctx, "context length")
	typ := fs.String("type", string(d.Type), "weight type: f32, f16 or q8_0")
	stop := fs.Int("stop-after", d.StopAfter, "greedy output length before </s>; 0 = never stop (benchmarks)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out == "" {
		fmt.Fprintln(stderr, "gen-model: -o FILE is required")
		fs.Usage()
		return 2
	}
	t, err := ggufgen.ParseTensorType(*typ)
	if err != nil {
		fmt.Fprintf(stderr, "gen-model: -type: %v\n", err)
		return 2
	}
	o := ggufgen.Options{
		Name: *name, Seed: *seed, Vocab: *vocab, Embd: *embd, Layers: *layers,
		Heads: *heads, KVHeads: *kvHeads, FF: *ff, Ctx: *ctx, Type: t, StopAfter: *stop,
	}
	if o.KVHeads == 0 {
		o.KVHeads = o.Heads
	}
	if err := ggufgen.Write(*out, o); err != nil {
		fmt.Fprintf(stderr, "gen-model: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (%d params, %s)\n", *out, o.Params(), o.Type)
	return 0
}
