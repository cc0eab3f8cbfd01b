package jobs_test

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/llorch/llorch/driver"
	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/jobs"
)

// The files users copy must decode against the driver's own schemas, the
// way a Nomad agent decodes them: an unknown or ill-typed field there
// would fail every task started from them.

func parse(t *testing.T, path string) *hclsyntax.Body {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", path, diags)
	}
	return f.Body.(*hclsyntax.Body)
}

func block(t *testing.T, b *hclsyntax.Body, path ...string) *hclsyntax.Block {
	t.Helper()
	var found *hclsyntax.Block
	for _, typ := range path {
		found = nil
		for _, c := range b.Blocks {
			if c.Type == typ {
				found = c
				break
			}
		}
		if found == nil {
			t.Fatalf("no %q block on the path %v", typ, path)
		}
		b = found.Body
	}
	return found
}

func decode(t *testing.T, spec *hclspec.Spec, body hcl.Body) cty.Value {
	t.Helper()
	s, err := hclspecdec.Convert(spec)
	if err != nil {
		t.Fatal(err)
	}
	v, diags := hcldec.Decode(body, s, nil)
	if diags.HasErrors() {
		t.Fatalf("decode: %v", diags)
	}
	return v
}

func TestExampleJobDecodesAsTaskConfig(t *testing.T) {
	b := parse(t, "../example.nomad.hcl")
	task := block(t, b, "job", "group", "task")
	if d := task.Body.Attributes["driver"]; d == nil {
		t.Fatal("task has no driver")
	} else if v, _ := d.Expr.Value(nil); v.AsString() != "llorch" {
		t.Fatalf("driver = %s", v.AsString())
	}
	v := decode(t, driver.TaskConfigSpec(), block(t, b, "job", "group", "task", "config").Body)
	if v.GetAttr("model").AsString() != "/opt/llorch/models/tiny.gguf" || v.GetAttr("port").AsString() != "http" {
		t.Errorf("config: %#v", v)
	}
	// The port the config names exists in the group's network block.
	block(t, b, "job", "group", "network", "port")
}

func TestAgentPluginDecodesAsPluginConfig(t *testing.T) {
	b := parse(t, "../deploy/nomad/agent-plugin.hcl")
	p := block(t, b, "plugin")
	if len(p.Labels) != 1 || p.Labels[0] != "llorch" {
		t.Fatalf("plugin labels %v", p.Labels)
	}
	v := decode(t, driver.PluginConfigSpec(), block(t, b, "plugin", "config").Body)
	if v.GetAttr("model_dir").AsString() != "/opt/llorch/models" {
		t.Errorf("model_dir = %#v", v.GetAttr("model_dir"))
	}
}

func TestRouterJobRunsTheRouter(t *testing.T) {
	b := parse(t, "../deploy/nomad/router.nomad.hcl")
	cfg := block(t, b, "job", "group", "task", "config").Body
	args, _ := cfg.Attributes["args"].Expr.Value(nil)
	if args.LengthInt() != 1 || args.Index(cty.NumberIntVal(0)).AsString() != "router" {
		t.Errorf("args = %#v", args)
	}
}

// What Render puts in the task config decodes against the driver's schema
// too (written out as HCL, as `nomad job inspect` would show it).
func TestRenderedConfigDecodesAsTaskConfig(t *testing.T) {
	s, err := jobs.ParseSpec([]byte("name: p\nmodel: /m/tiny.gguf\nctx: 2048\nslots: 2\ngpus: 1\nvram_mib: 600\ngpu_layers: -1\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := jobs.Render(s).TaskGroups[0].Tasks[0].Config
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var src strings.Builder
	for _, k := range keys {
		switch v := cfg[k].(type) {
		case string:
			fmt.Fprintf(&src, "%s = %q\n", k, v)
		default:
			fmt.Fprintf(&src, "%s = %v\n", k, v)
		}
	}
	f, diags := hclsyntax.ParseConfig([]byte(src.String()), "rendered", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	v := decode(t, driver.TaskConfigSpec(), f.Body)
	if n, _ := v.GetAttr("vram_mib").AsBigFloat().Int64(); n != 600 {
		t.Errorf("vram_mib = %#v\n%s", v.GetAttr("vram_mib"), src.String())
	}
}
