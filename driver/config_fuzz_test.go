package driver

import (
	"bytes"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"

	"github.com/llorch/llorch/driver/nomadclient"
)

// FuzzTaskConfigDecode checks the task-config msgpack decoder (our own
// key-by-key reader over the type hclspecdec derives from the schema)
// against two oracles:
//   - cty's own msgpack decoding of the whole object: wherever the input
//     leaves the `any` attribute (gpus) out or null, both must accept the
//     same inputs and agree on the value;
//   - a round trip: what we decoded, re-encoded the way the agent encodes
//     (cty/msgpack with the value's concrete type), decodes to the same.
//
// DecodeTaskConfig must never panic, whatever the bytes.
func FuzzTaskConfigDecode(f *testing.F) {
	spec := TaskConfigSpec()
	for _, cfg := range []map[string]interface{}{
		{"model": "m.gguf"},
		{"model": "m.gguf", "port": "http", "ctx": 4096, "slots": 4, "gpus": 2, "extra_args": []string{"--flag", "x"},
			"env": map[string]interface{}{"A": "1"}, "service": map[string]interface{}{"name": "s", "tags": []string{"t"}}},
		{"model": "org/model", "engine": "vllm", "gpus": []string{"GPU-1", "GPU-2"}, "vram_mib": 1024, "gpu_layers": -1},
		{"model": "m", "port": 8080, "threads": 1.5},
	} {
		b, err := nomadclient.EncodeConfig(spec, cfg)
		if err != nil {
			f.Fatalf("seed %v: %v", cfg, err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0xc0})
	f.Add([]byte{0x81, 0xa4, 'g', 'p', 'u', 's', 0x92, 0x01, 0xa1, 'x'})

	atys, err := impliedType(spec)
	if err != nil {
		f.Fatal(err)
	}
	objTy := cty.Object(atys)

	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = DecodeTaskConfig(data) // must not panic

		vals, err := unmarshalConfig(data, spec)
		gpus, hasGPUs := vals["gpus"]
		dynamicUsed := err == nil && hasGPUs && !gpus.IsNull()

		// Oracle 1: cty decodes the whole object. The agent sends every
		// attribute (cty requires that; we also take a partial map), and
		// a bare `any` value where cty wants one wrapped, so the two are
		// compared where both rules hold.
		if len(data) > 0 && !dynamicUsed {
			want, cerr := ctymsgpack.Unmarshal(data, objTy)
			full := mapLen(data) == len(atys)
			switch {
			case cerr == nil && (want.IsNull() || !want.IsWhollyKnown() || !want.Type().Equals(objTy)):
				// a msgpack nil, cty's "unknown" extension, an empty map
				// or duplicate keys: not an agent encoding (the agent
				// encodes known values only, every attribute once)
			case err == nil && cerr == nil:
				if got := cty.ObjectVal(vals); !got.RawEquals(want) {
					t.Fatalf("decoded %#v, cty decodes %#v", got, want)
				}
			case err == nil && full && !mentionsGPUs(data):
				t.Fatalf("we accept what cty refuses (%v): %#v", cerr, vals)
			case err != nil && cerr == nil && !mentionsGPUs(data):
				t.Fatalf("we refuse what cty accepts (%#v): %v", want, err)
			}
		}
		if err != nil {
			return
		}

		// Oracle 2: round trip through the agent's encoding.
		obj := cty.ObjectVal(vals)
		b, err := ctymsgpack.Marshal(obj, obj.Type())
		if err != nil {
			t.Fatalf("re-encode %#v: %v", obj, err)
		}
		again, err := unmarshalConfig(b, spec)
		if err != nil {
			t.Fatalf("decode of our own re-encoding: %v", err)
		}
		if got := cty.ObjectVal(again); !got.RawEquals(obj) {
			t.Fatalf("round trip: %#v became %#v", obj, got)
		}
	})
}

// mapLen is the root map's length, -1 if the input is not a map.
func mapLen(data []byte) int {
	n, err := msgpack.NewDecoder(bytes.NewReader(data)).DecodeMapLen()
	if err != nil {
		return -1
	}
	return n
}

// mentionsGPUs: cty and we legitimately differ on a "gpus" key with a
// non-nil value (bare vs wrapped dynamic encoding).
func mentionsGPUs(data []byte) bool {
	for i := 0; i+4 < len(data); i++ {
		if string(data[i:i+4]) == "gpus" {
			return true
		}
	}
	return false
}
