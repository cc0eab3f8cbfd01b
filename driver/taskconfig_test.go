// Bad task configs and the msgpack editing helpers that build them.

package driver_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	vmsgpack "github.com/vmihailenco/msgpack/v5"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/internal/nomadpb/structs"
)

// TestBadTaskConfigs: each bad config gets a clear error naming the
// problem, and nothing is left running.
func TestBadTaskConfigs(t *testing.T) {
	p := launch(t)
	_, ts := schema(t, p)
	model := writeModel(t)

	// Configs the agent would refuse itself (hcldec) must name the field.
	for _, c := range []struct {
		cfg   map[string]interface{}
		field string
	}{
		{engineConfig(model, map[string]interface{}{"modle": "x"}), "modle"},
		{engineConfig(model, map[string]interface{}{"ctx": "lots"}), "ctx"},
		{map[string]interface{}{"port": "http"}, "model"},
	} {
		if _, err := nomadclient.EncodeConfig(ts, c.cfg); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Fatalf("agent-side decode of %v: error %v does not name %q", c.cfg, err, c.field)
		}
	}

	valid, err := nomadclient.EncodeConfig(ts, engineConfig(model, nil))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		msgpack     func(t *testing.T) []byte
		wantIn      string
		recoverable bool
	}{
		{"unknown field", func(t *testing.T) []byte { return withExtraKey(t, valid, "modle", "x") }, `"modle"`, false},
		{"wrong type", func(t *testing.T) []byte { return replaceKey(t, ts, engineConfig(model, nil), "ctx", "lots") }, `"ctx"`, false},
		{"fractional number", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"slots": 1.5}))
			return b
		}, `"slots"`, false},
		{"missing model file", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig("/nonexistent/model.gguf", nil))
			return b
		}, "/nonexistent/model.gguf", false},
		{"unknown engine", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"engine": "nosuch"}))
			return b
		}, `"engine"`, false},
		{"unknown port label", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"port": "grpc"}))
			return b
		}, `"grpc"`, false},
		{"gpus on a node without GPUs", func(t *testing.T) []byte {
			b, _ := nomadclient.EncodeConfig(ts, engineConfig(model, map[string]interface{}{"gpus": 1}))
			return b
		}, "no GPUs fingerprinted", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := newAlloc(t)
			tc := a.rawTaskConfig(c.msgpack(t))
			_, err := p.Driver.StartTask(ctxT(t, 20*time.Second), &drivers.StartTaskRequest{Task: tc})
			if err == nil {
				t.Fatal("StartTask succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), c.wantIn) {
				t.Fatalf("error %q does not mention %s", err, c.wantIn)
			}
			if got := isRecoverable(err); got != c.recoverable {
				t.Fatalf("recoverable = %v, want %v (%v)", got, c.recoverable, err)
			}
			a.requireNoProcesses(t)
			if _, err := os.Stat(filepath.Join(a.dir, a.task, ".llorch")); err == nil {
				ents, _ := os.ReadDir(filepath.Join(a.dir, a.task, ".llorch"))
				if len(ents) > 0 {
					t.Fatalf("state left behind: %v", ents)
				}
			}
		})
	}
}

// isRecoverable decodes the error as the agent does: FailedPrecondition
// with a RecoverableError{recoverable: true} detail.
func isRecoverable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return false
	}
	for _, d := range st.Details() {
		if re, ok := d.(*structs.RecoverableError); ok && re.GetRecoverable() {
			return true
		}
	}
	return false
}

// withExtraKey re-encodes a config with one attribute the schema lacks,
// as a buggy or foreign client could send.
func withExtraKey(t *testing.T, valid []byte, key, value string) []byte {
	t.Helper()
	return reencode(t, valid, func(m map[string]cty.Value) { m[key] = cty.StringVal(value) })
}

// replaceKey encodes cfg, then swaps one attribute's value for a string.
func replaceKey(t *testing.T, ts *hclspec.Spec, cfg map[string]interface{}, key, value string) []byte {
	t.Helper()
	b, err := nomadclient.EncodeConfig(ts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reencode(t, b, func(m map[string]cty.Value) { m[key] = cty.StringVal(value) })
}

func reencode(t *testing.T, b []byte, edit func(map[string]cty.Value)) []byte {
	t.Helper()
	var generic interface{}
	if err := vmsgpack.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	vals := map[string]cty.Value{}
	for k, v := range generic.(map[string]interface{}) {
		vals[k] = toCty(v)
	}
	edit(vals)
	obj := cty.ObjectVal(vals)
	out, err := ctymsgpack.Marshal(obj, obj.Type())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func toCty(v interface{}) cty.Value {
	switch x := v.(type) {
	case nil:
		return cty.NullVal(cty.DynamicPseudoType)
	case string:
		return cty.StringVal(x)
	case bool:
		return cty.BoolVal(x)
	case int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		n, _ := strconv.ParseInt(fmt.Sprint(x), 10, 64)
		return cty.NumberIntVal(n)
	case float64:
		return cty.NumberFloatVal(x)
	case []interface{}:
		if len(x) == 0 {
			return cty.EmptyTupleVal
		}
		var vs []cty.Value
		for _, e := range x {
			vs = append(vs, toCty(e))
		}
		return cty.TupleVal(vs)
	case map[string]interface{}:
		m := map[string]cty.Value{}
		for k, e := range x {
			m[k] = toCty(e)
		}
		return cty.ObjectVal(m)
	}
	panic(fmt.Sprintf("toCty: %T", v))
}
