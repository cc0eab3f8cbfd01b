package vramest

import (
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/ggufgen"
)

func model(t *testing.T, mut func(*ggufgen.Options)) string {
	t.Helper()
	o := ggufgen.DefaultOptions()
	if mut != nil {
		mut(&o)
	}
	return ggufgen.TestModel(t, o)
}

// The default generated model: E=64, V=381, L=2, 4 heads (kv 4, head dim
// 16), FF=128, all 2-D tensors F32.
func TestDefaultModelExact(t *testing.T) {
	e, err := FromFile(model(t, nil), Params{Engine: "llamacpp", Ctx: 2048, Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	// weights: token_embd 64×381×4 = 97536, output 97536, output_norm 256;
	// per layer norms 2×256 + q,k,v,o 4×(64×64×4 = 16384) + gate,up,down
	// 3×(64×128×4 = 32768) = 164352; 2 layers = 328704. Sum 524032
	// (= 131008 params × 4 bytes).
	// kv: 2 layers × 4096 ctx × 4 kv heads × (16+16) × 2 bytes = 2097152.
	// compute: logits 381×512×4 = 780288; KQ 4×512×4096×4 = 33554432;
	// acts 512×(4×64 + 2×128)×4 = 1048576; sum 35383296.
	// margin: 5% of 38004480 = 1900224; overhead 256 MiB = 268435456.
	want := Estimate{Weights: 524032, KVCache: 2097152, Compute: 35383296, Margin: 1900224, Overhead: 268435456, Total: 308340160}
	check(t, e, want)
	if e.TotalMiB() != 295 { // 308340160 / 2^20 = 294.06 → 295
		t.Errorf("TotalMiB = %d, want 295", e.TotalMiB())
	}
	if e.CtxTotal != 4096 || e.HeadDimK != 16 || e.KVHeads != 4 || e.Vocab != 381 || e.UBatch != 512 {
		t.Errorf("inputs: %+v", e)
	}
}

// Q8_0 weights, GQA off, Ollama's overhead, q8_0 KV cache, one slot.
func TestQ8ModelOllamaExact(t *testing.T) {
	e, err := FromFile(model(t, func(o *ggufgen.Options) { o.Type = ggufgen.Q8_0 }), Params{Engine: "ollama", Ctx: 1024, Slots: 1, KVType: "q8_0"})
	if err != nil {
		t.Fatal(err)
	}
	// Q8_0 stores 32 values in 34 bytes. token_embd 24384 values = 762
	// blocks = 25908 bytes, output the same; per layer q,k,v,o 4×4352 +
	// gate,up,down 3×8704 + two F32 norms 512 = 44032; 2 layers 88064;
	// output_norm 256. Sum 140136.
	// kv: 2 × 1024 × 4 × 32 = 262144 elements × 34/32 = 278528.
	// compute: 780288 + 4×512×1024×4 (8388608) + 1048576 = 10217472.
	// margin: 5% of 10636136 = 531806; overhead 384 MiB = 402653184.
	want := Estimate{Weights: 140136, KVCache: 278528, Compute: 10217472, Margin: 531806, Overhead: 402653184, Total: 413821126}
	check(t, e, want)
}

// A larger model scales the parts the way the formula says: GQA 8:2 heads
// with embd 128 and 4 layers, F16 weights, tiny context (ubatch clamps to it).
func TestGQAAndSmallContext(t *testing.T) {
	e, err := FromFile(model(t, func(o *ggufgen.Options) {
		o.Embd, o.Layers, o.Heads, o.KVHeads, o.FF, o.Type = 128, 4, 8, 2, 256, ggufgen.F16
	}), Params{Ctx: 256, Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	// head dim 128/8 = 16; kv: 4 × 256 × 2 × 32 × 2 = 131072.
	if e.KVCache != 131072 || e.UBatch != 256 || e.HeadDimK != 16 || e.KVHeads != 2 {
		t.Fatalf("got %+v", e)
	}
	// weights F16: token_embd+output 2×128×381×2 = 195072, output_norm 512,
	// per layer q,o 2×128×128×2 = 65536, k,v 2×128×32×2 = 16384,
	// gate,up,down 3×128×256×2 = 196608, norms 1024 → 279552; ×4 = 1118208.
	if e.Weights != 195072+512+1118208 {
		t.Errorf("weights %d", e.Weights)
	}
}

func TestUnsupportedEngineAndBadKV(t *testing.T) {
	p := model(t, nil)
	for _, eng := range []string{"vllm", "sglang", "tgi"} {
		if _, err := FromFile(p, Params{Engine: eng}); !errors.Is(err, ErrUnsupportedEngine) || !strings.Contains(err.Error(), "vram_mib") {
			t.Errorf("%s: %v", eng, err)
		}
	}
	if _, err := FromFile(p, Params{KVType: "q4"}); err == nil || !strings.Contains(err.Error(), "kv type") {
		t.Errorf("bad kv type: %v", err)
	}
	if _, err := FromFile(filepath.Join(t.TempDir(), "missing.gguf"), Params{}); err == nil {
		t.Error("missing file: no error")
	}
}

func TestCompareAndTable(t *testing.T) {
	e := Estimate{Total: 200 * MiB}
	if got := Compare(e, 160); math.Abs(got-25) > 1e-9 {
		t.Errorf("Compare = %v, want 25", got)
	}
	if !math.IsNaN(Compare(e, 0)) {
		t.Error("Compare with no measurement should be NaN")
	}
	full, _ := FromFile(model(t, nil), Params{Ctx: 2048, Slots: 2})
	tab := full.Table()
	for _, s := range []string{"weights", "kv cache", "compute", "overhead", "margin", "= 295 MiB"} {
		if !strings.Contains(tab, s) {
			t.Errorf("table lacks %q:\n%s", s, tab)
		}
	}
}

func check(t *testing.T, got, want Estimate) {
	t.Helper()
	if got.Weights != want.Weights || got.KVCache != want.KVCache || got.Compute != want.Compute ||
		got.Margin != want.Margin || got.Overhead != want.Overhead || got.Total != want.Total {
		t.Errorf("estimate\n got  w=%d kv=%d c=%d m=%d o=%d total=%d\n want w=%d kv=%d c=%d m=%d o=%d total=%d",
			got.Weights, got.KVCache, got.Compute, got.Margin, got.Overhead, got.Total,
			want.Weights, want.KVCache, want.Compute, want.Margin, want.Overhead, want.Total)
	}
}

// The log line and the event text carry the error and every part, so a
// wrong estimate can be traced to the part that was off.
func TestLogFieldsAndSummary(t *testing.T) {
	e, err := FromFile(model(t, nil), Params{Ctx: 2048, Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Estimate 308340160 bytes = 294.06 MiB (295 whole MiB); measured 280:
	// error (294.06 - 280) / 280 = +5.02 %.
	f := LogFields(e, 280)
	got := map[string]any{}
	for i := 0; i+1 < len(f); i += 2 {
		got[f[i].(string)] = f[i+1]
	}
	want := map[string]any{
		"engine": "llamacpp", "estimate_mib": 295, "measured_mib": 280, "error_pct": 5.0,
		// weights 524032 B = 0.4998 MiB; kv 2097152 B = 2 MiB; compute
		// 35383296 B = 33.74 MiB; margin 1900224 B = 1.81 MiB.
		"weights_mib": 0.5, "kv_cache_mib": 2.0, "compute_mib": 33.7, "overhead_mib": 256.0, "margin_mib": 1.8,
		"ctx_total": uint64(4096), "kv_type": "f16",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v (%T), want %v (%T)", k, got[k], got[k], v, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v", got)
	}
	s := Summary(e, 280)
	if s != "VRAM estimate 295 MiB, measured 280 MiB (+5.0%): weights 0.5, kv 2.0, compute 33.7, overhead 256.0, margin 1.8 MiB" {
		t.Errorf("summary = %q", s)
	}
	if s := Summary(e, 400); !strings.Contains(s, "(-26.5%)") { // (294.06-400)/400
		t.Errorf("under-estimate summary = %q", s)
	}
}
