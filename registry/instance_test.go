package registry

import (
	"strings"
	"testing"
)

func sample() Instance {
	return Instance{
		ID: "llorch-a1-llama", Service: DefaultServiceName, Address: "10.0.0.5", Port: 8081,
		Model: "tiny", ModelDigest: "abc", Engine: "llamacpp", EngineVersion: "b11669",
		NodeID: "n1", NodeName: "gpu-1", PoolID: "tiny-pool", Ctx: 2048, Slots: 4,
		GPUs: []string{"GPU-1", "GPU-2"}, VRAMReservedMiB: 600, VRAMTotalMiB: 81920,
		APIs: []string{"/v1/chat/completions", "/v1/completions"}, NodeModels: "tiny:1:abc",
	}
}

// What the driver writes, the router reads back unchanged.
func TestRegistryRoundTrip(t *testing.T) {
	in := sample()
	meta, err := in.Meta()
	if err != nil {
		t.Fatal(err)
	}
	for k := range meta {
		if strings.Contains(k, ".") {
			t.Errorf("meta key %q has a dot (Consul forbids it)", k)
		}
	}
	out, err := FromRegistry(in.ID, in.Service, in.Address, in.Port, in.Tags(), meta, HealthPassing)
	if err != nil {
		t.Fatal(err)
	}
	in.Health = HealthPassing
	if strings.Join(out.GPUs, ",") != "GPU-1,GPU-2" || out.Ctx != 2048 || out.Slots != 4 || out.VRAMTotalMiB != 81920 ||
		out.Model != in.Model || out.NodeID != "n1" || out.PoolID != "tiny-pool" || out.EngineVersion != "b11669" ||
		len(out.APIs) != 2 || out.NodeModels != in.NodeModels || out.Health != HealthPassing {
		t.Errorf("round trip:\n in  %+v\n out %+v", in, out)
	}
	if out.URL() != "http://10.0.0.5:8081" {
		t.Errorf("URL = %s", out.URL())
	}
	if !out.Serves("/v1/completions") || out.Serves("/v1/embeddings") {
		t.Error("Serves does not follow APIs")
	}
}

func TestMetaRefusesOverlongValues(t *testing.T) {
	in := sample()
	in.NodeModels = strings.Repeat("x", MaxMetaValue+1)
	if _, err := in.Meta(); err == nil || !strings.Contains(err.Error(), "node_models") {
		t.Fatalf("err = %v", err)
	}
}

func TestFromRegistryErrors(t *testing.T) {
	meta, _ := sample().Meta()
	meta[MetaSchema] = "9"
	if _, err := FromRegistry("x", "s", "a", 1, nil, meta, HealthPassing); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Errorf("schema: %v", err)
	}
	meta, _ = sample().Meta()
	meta[MetaSlots] = "four"
	if _, err := FromRegistry("x", "s", "a", 1, nil, meta, HealthPassing); err == nil || !strings.Contains(err.Error(), "slots_total") {
		t.Errorf("bad int: %v", err)
	}
	// A hand-made registration with tags only still decodes.
	got, err := FromRegistry("x", "s", "a", 1, []string{"model=m", "engine=ollama", "pool=p"}, nil, HealthPassing)
	if err != nil || got.Model != "m" || got.Engine != "ollama" || got.PoolID != "p" {
		t.Errorf("tags only: %+v %v", got, err)
	}
	if _, err := FromRegistry("x", "s", "a", 1, nil, nil, HealthPassing); err == nil {
		t.Error("no model: no error")
	}
}

func TestValidateAndOrder(t *testing.T) {
	if err := (Instance{ID: "x"}).Validate(); err == nil || !strings.Contains(err.Error(), "address") || !strings.Contains(err.Error(), "model") {
		t.Errorf("validate: %v", err)
	}
	if err := sample().Validate(); err != nil {
		t.Error(err)
	}
	l := []Instance{{NodeID: "b", ID: "1"}, {NodeID: "a", ID: "2"}, {NodeID: "a", ID: "1"}}
	Sort(l)
	if l[0].NodeID != "a" || l[0].ID != "1" || l[1].ID != "2" || l[2].NodeID != "b" {
		t.Errorf("order: %+v", l)
	}
	if (Instance{Address: "::1", Port: 9}).URL() != "http://[::1]:9" {
		t.Error("IPv6 URL not bracketed")
	}
}

// The TLS meta round-trips; an instance without it (an older writer, or
// one not yet moved to TLS) stays plain HTTP, so mixed fleets work.
func TestTLSMeta(t *testing.T) {
	in := sample()
	meta, _ := in.Meta()
	if _, ok := meta[MetaTLS]; ok {
		t.Errorf("plain instance writes %s=%q; want no key (older readers see no change)", MetaTLS, meta[MetaTLS])
	}
	in.TLS = true
	meta, _ = in.Meta()
	if meta[MetaTLS] != "1" {
		t.Fatalf("TLS instance: meta %s=%q, want 1", MetaTLS, meta[MetaTLS])
	}
	out, err := FromRegistry(in.ID, in.Service, in.Address, in.Port, in.Tags(), meta, HealthPassing)
	if err != nil {
		t.Fatal(err)
	}
	if !out.TLS || out.URL() != "https://10.0.0.5:8081" {
		t.Errorf("TLS instance read back: TLS=%v URL=%s, want true https://10.0.0.5:8081", out.TLS, out.URL())
	}
	out.Address = "fd00::5"
	if out.URL() != "https://[fd00::5]:8081" {
		t.Errorf("IPv6 URL = %s", out.URL())
	}
}
