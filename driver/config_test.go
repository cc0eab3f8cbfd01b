package driver

import (
	"reflect"
	"strings"
	"testing"

	"github.com/llorch/llorch/driver/nomadclient"
)

// The schema's default literals and the Go defaults must agree: the agent
// fills the literals in, a config with nothing at all gets the Go ones.
func TestPluginConfigDefaultsAgree(t *testing.T) {
	b, err := nomadclient.EncodeConfig(PluginConfigSpec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	fromAgent, err := DecodePluginConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	fromNothing, err := DecodePluginConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := defaultPluginConfig()
	if !reflect.DeepEqual(fromAgent, want) || !reflect.DeepEqual(fromNothing, want) {
		t.Fatalf("defaults differ:\nagent   %+v\nnothing %+v\nwant    %+v", fromAgent, fromNothing, want)
	}
}

func TestPluginConfigAllFields(t *testing.T) {
	b, err := nomadclient.EncodeConfig(PluginConfigSpec(), map[string]interface{}{
		"consul":             map[string]interface{}{"address": "127.0.0.1:8500", "token_file": "/etc/t"},
		"engines":            map[string]interface{}{"llamacpp": "/opt/llama-server"},
		"default_engine":     "llamacpp",
		"fingerprint_period": "5s",
		"require_gpu":        true,
		"gpu_sharing":        false,
		"vram_headroom_mib":  1024,
		"model_dir":          "/models",
		"engine_token_file":  "/etc/engine-token",
		"advertise_address":  "10.0.0.5",
		"node_id":            "n1",
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodePluginConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.Consul.Address != "127.0.0.1:8500" || c.Consul.ServiceName != "llorch-engine" || c.Engines["llamacpp"] != "/opt/llama-server" ||
		c.FingerprintPeriod.String() != "5s" || !c.RequireGPU || c.GPUSharing || c.VRAMHeadroomMiB != 1024 ||
		c.ModelDir != "/models" || c.EngineTokenFile != "/etc/engine-token" || c.AdvertiseAddress != "10.0.0.5" || c.NodeID != "n1" {
		t.Fatalf("decoded %+v", c)
	}
}

func TestTaskConfigDecode(t *testing.T) {
	enc := func(cfg map[string]interface{}) []byte {
		b, err := nomadclient.EncodeConfig(TaskConfigSpec(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c, err := DecodeTaskConfig(enc(map[string]interface{}{
		"model": "/m/x.gguf", "port": 8080, "gpus": []string{"GPU-a", "GPU-b"}, "ctx": 4096, "gpu_layers": -1,
		"service": map[string]interface{}{"name": "svc", "tags": []string{"t1"}}, "env": map[string]interface{}{"A": "b"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != "8080" || !reflect.DeepEqual(c.GPUIDs, []string{"GPU-a", "GPU-b"}) || c.Ctx != 4096 || c.GPULayers != -1 ||
		c.Service.Name != "svc" || c.Service.Tags[0] != "t1" || c.Env["A"] != "b" {
		t.Fatalf("decoded %+v", c)
	}
	c, err = DecodeTaskConfig(enc(map[string]interface{}{"model": "x.gguf", "gpus": 2}))
	if err != nil || c.GPUCount != 2 || !c.WantsGPUs() {
		t.Fatalf("gpus count: %+v %v", c, err)
	}
	for _, bad := range []struct {
		cfg   map[string]interface{}
		field string
	}{
		{map[string]interface{}{"model": "x", "gpus": true}, `"gpus"`},
		{map[string]interface{}{"model": "x", "gpus": 1.5}, `"gpus"`},
		{map[string]interface{}{"model": "x", "threads": -2}, `"threads"`},
		{map[string]interface{}{"model": ""}, `"model"`},
	} {
		_, err := DecodeTaskConfig(enc(bad.cfg))
		if err == nil || !strings.Contains(err.Error(), bad.field) {
			t.Fatalf("%v: error %v does not name %s", bad.cfg, err, bad.field)
		}
	}
}
