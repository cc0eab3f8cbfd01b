package hclspecdec_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	ctyjson "github.com/zclconf/go-cty/cty/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"
	"google.golang.org/protobuf/proto"

	"github.com/llorch/llorch/driver"
	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/driver/users"
	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
)

// The files under testdata/agent-v1.6.5-* were captured from a real Nomad
// v1.6.5 agent (a local build, run with -dev) loading the llorch plugin with
// testdata/agent-v1.6.5-client.hcl and running testdata/agent-v1.6.5-good.nomad.hcl:
// the raw SetConfig msgpack_config and StartTask msgpack_driver_config bytes,
// and the job's Task.Config as `nomad job inspect` returns it. See
// testdata/README.md.

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// agentType is the cty type the agent encoded data with, as our spec
// conversion implies it: each attribute takes the type hcldec implies for
// the converted spec, except `any` attributes, which the agent encodes as
// their concrete value, so their type is read from the bytes.
func agentType(t *testing.T, spec *hclspec.Spec, data []byte) cty.Type {
	t.Helper()
	hs, err := hclspecdec.Convert(spec)
	if err != nil {
		t.Fatal(err)
	}
	implied := hcldec.ImpliedType(hs)
	if !implied.IsObjectType() {
		t.Fatalf("implied type %s is not an object", implied.FriendlyName())
	}
	atys := implied.AttributeTypes()
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	n, err := dec.DecodeMapLen()
	if err != nil {
		t.Fatalf("agent bytes are not a msgpack map: %v", err)
	}
	if n != len(atys) {
		t.Errorf("agent sent %d attributes, our spec implies %d", n, len(atys))
	}
	out := map[string]cty.Type{}
	for i := 0; i < n; i++ {
		k, err := dec.DecodeString()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := dec.DecodeRaw()
		if err != nil {
			t.Fatal(err)
		}
		ty, ok := atys[k]
		if !ok {
			t.Fatalf("agent sent attribute %q that our spec does not imply", k)
		}
		if ty == cty.DynamicPseudoType {
			if ty, err = ctymsgpack.ImpliedType(raw); err != nil {
				t.Fatalf("%s: %v", k, err)
			}
		}
		out[k] = ty
	}
	for k := range atys {
		if _, ok := out[k]; !ok {
			t.Errorf("agent did not send attribute %q (it sends every attribute, null when unset)", k)
		}
	}
	return cty.Object(out)
}

// roundTrip decodes the agent's bytes with the type our spec implies and
// checks that encoding that value again gives the agent's bytes exactly.
func roundTrip(t *testing.T, spec *hclspec.Spec, data []byte) cty.Value {
	t.Helper()
	ty := agentType(t, spec, data)
	val, err := ctymsgpack.Unmarshal(data, ty)
	if err != nil {
		t.Fatalf("our implied type %s does not decode the agent's bytes: %v", ty.FriendlyName(), err)
	}
	again, err := ctymsgpack.Marshal(val, ty)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Fatalf("re-encoding differs from the agent's bytes\n got %s\nwant %s", hex.EncodeToString(again), hex.EncodeToString(data))
	}
	return val
}

func TestAgentTaskConfigBytes(t *testing.T) {
	data := readTestdata(t, "agent-v1.6.5-task-good.msgpack")
	roundTrip(t, capturedTaskSpec(), data)

	// The driver's decoder reads what the job file says.
	got, err := driver.DecodeTaskConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	want := driver.TaskConfig{
		Engine:    "llamacpp",
		Model:     "/tmp/nomadrun/w/models/tiny.gguf",
		ModelName: "tiny",
		Port:      "http",
		Ctx:       512,
		Slots:     1,
		Threads:   1,
		ExtraArgs: []string{"--temp", "0.5"},
		Env:       map[string]string{"LLORCH_NOTE": "hello"},
		Pool:      "good-pool",
		Service:   driver.ServiceConfig{Name: "llorch-engine", Tags: []string{"team-a", "canary"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded\n %+v\nwant\n %+v", got, want)
	}

	// Our encoder, given the Task.Config the server stored, sends the same bytes.
	var cfg map[string]interface{}
	if err := json.Unmarshal(readTestdata(t, "agent-v1.6.5-task-good.config.json"), &cfg); err != nil {
		t.Fatal(err)
	}
	enc, err := nomadclient.EncodeConfig(capturedTaskSpec(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, data) {
		t.Fatalf("nomadclient.EncodeConfig differs from the agent's bytes\n got %s\nwant %s", hex.EncodeToString(enc), hex.EncodeToString(data))
	}
}

func TestAgentPluginConfigBytes(t *testing.T) {
	data := readTestdata(t, "agent-v1.6.5-plugin.msgpack")
	val := roundTrip(t, capturedPluginSpec(), data)

	// What an agent sends the driver of today for the same client config:
	// the captured values under today's schema (attributes added since are
	// unset), through our agent-faithful encoder.
	js, err := ctyjson.Marshal(val, val.Type())
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]interface{}
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	dropNulls(cfg)
	now, err := nomadclient.EncodeConfig(driver.PluginConfigSpec(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := driver.DecodePluginConfig(now)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		field     string
		got, want interface{}
	}{
		{"consul.address", got.Consul.Address, "127.0.0.1:18500"},
		{"consul.service_name (default)", got.Consul.ServiceName, "llorch-engine"},
		{"engines", got.Engines, map[string]string{"llamacpp": "/tmp/nomadrun/opt/llama-server"}},
		{"model_dir", got.ModelDir, "/tmp/nomadrun/w/models"},
		{"engine_token_file", got.EngineTokenFile, "/tmp/nomadrun/w/engine.token"},
		{"fingerprint_period", got.FingerprintPeriod.String(), "2s"},
		{"default_user", got.DefaultUser, "nobody"},
		{"denied_host_uids", got.DeniedHostUIDs, users.Ranges{{Lo: 0, Hi: 999}}},
		{"denied_host_gids", got.DeniedHostGIDs, users.Ranges{{Lo: 0, Hi: 999}}},
		{"vram_headroom_mib", got.VRAMHeadroomMiB, 256},
		{"gpu_sharing (default)", got.GPUSharing, true},
		{"default_engine (default)", got.DefaultEngine, "llamacpp"},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.field, c.got, c.want)
		}
	}
}

// Two more task configs from the same agent: one that sets only the
// required fields (every other attribute arrives as nil), and the hostile
// job that blanks the engine key. The agent sent identical bytes for
// `env { LLAMA_API_KEY = "" }` and `env = { LLAMA_API_KEY = "" }`; the
// decoder must read the blank value (so the driver can refuse it by name)
// rather than drop it.
func TestAgentTaskConfigBytesSparse(t *testing.T) {
	base := driver.TaskConfig{
		Engine:    "llamacpp",
		Model:     "/tmp/nomadrun/w/models/tiny.gguf",
		ModelName: "tiny",
		Port:      "http",
		Ctx:       512,
		Slots:     1,
	}
	withEnv := base
	withEnv.Env = map[string]string{"LLAMA_API_KEY": ""}
	for _, c := range []struct {
		file string
		want driver.TaskConfig
	}{
		{"agent-v1.6.5-task-minimal.msgpack", base},
		{"agent-v1.6.5-task-env-blank.msgpack", withEnv},
	} {
		t.Run(c.file, func(t *testing.T) {
			data := readTestdata(t, c.file)
			roundTrip(t, capturedTaskSpec(), data)
			got, err := driver.DecodeTaskConfig(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("decoded\n %+v\nwant\n %+v", got, c.want)
			}
		})
	}
}

// The driver's schemas as they were when the testdata was captured. An agent
// sends every attribute of the spec the plugin gives it (null when unset),
// so bytes captured under an older spec lack the attributes added since;
// those are dropped here, and only those: a field renamed or retyped still
// fails the tests. Add to these lists when a field is added to a schema.
func capturedTaskSpec() *hclspec.Spec {
	return withoutAttrs(driver.TaskConfigSpec(), "tls_cert_file", "tls_key_file", "tls_client_ca_file")
}

func capturedPluginSpec() *hclspec.Spec {
	return withoutAttrs(driver.PluginConfigSpec(), "consul.ca_file", "consul.cert_file", "consul.key_file")
}

// withoutAttrs is a copy of spec without the attributes at the given
// dotted paths (through objects and blocks).
func withoutAttrs(spec *hclspec.Spec, paths ...string) *hclspec.Spec {
	s := proto.Clone(spec).(*hclspec.Spec)
	for _, p := range paths {
		dropAttr(s, strings.Split(p, "."))
	}
	return s
}

func dropAttr(s *hclspec.Spec, path []string) {
	switch b := s.Block.(type) {
	case *hclspec.Spec_Object:
		if len(path) == 1 {
			delete(b.Object.Attributes, path[0])
		} else if n, ok := b.Object.Attributes[path[0]]; ok {
			dropAttr(n, path[1:])
		}
	case *hclspec.Spec_BlockValue:
		dropAttr(b.BlockValue.Nested, path)
	case *hclspec.Spec_Default:
		dropAttr(b.Default.Primary, path)
	}
}

// dropNulls removes unset (null) attributes, as a config file leaves them
// out; the encoder sends them as null again.
func dropNulls(m map[string]interface{}) {
	for k, v := range m {
		switch v := v.(type) {
		case nil:
			delete(m, k)
		case map[string]interface{}:
			dropNulls(v)
		}
	}
}
