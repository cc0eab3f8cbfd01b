// Package vramest estimates how much GPU memory an engine needs for a model
// before it is launched, from the GGUF file's header alone, and shows the
// parts of the estimate rather than one opaque number (GPUStack users ask
// for exactly that: gpustack#2101, #849).
//
// The model is llama.cpp's memory layout, which Ollama shares:
//
//	weights   the sum of all tensor sizes, in their stored types
//	kv cache  layers × ctx_total × (n_kv_heads × (head_dim_k + head_dim_v)) × bytes per KV element
//	compute   llama.cpp's graph scratch for one micro-batch, without flash attention:
//	          logits  n_vocab × n_ubatch × 4
//	          + KQ    n_head × n_ubatch × ctx_total × 4   (one layer's attention scores, reused)
//	          + acts  n_ubatch × (4 × n_embd + 2 × n_ff) × 4
//	overhead  the runtime's fixed cost on the GPU (CUDA context, cuBLAS workspace)
//	margin    MarginPercent of weights + kv + compute
//
// ctx_total = ctx per slot × slots, because llama-server splits its -c
// between its -np slots. The compute and overhead figures are stated
// approximations; Compare reports how far an estimate was from what NVML
// measured, so the error is visible and can be tuned.
package vramest

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"text/tabwriter"

	gguf "github.com/gpustack/gguf-parser-go"
)

// MiB is 2^20 bytes.
const MiB = 1 << 20

// MarginPercent is the safety margin on the variable parts of an estimate.
const MarginPercent = 5

// DefaultUBatch is llama.cpp's default physical batch (-ub).
const DefaultUBatch = 512

// runtimeOverhead is the fixed GPU memory an engine's runtime takes before
// any model tensor: a CUDA context with cuBLAS is ~250-300 MiB on recent
// drivers; Ollama's runner adds its own allocator pools.
var runtimeOverhead = map[string]uint64{
	"llamacpp": 256 * MiB,
	"ollama":   384 * MiB,
}

// ErrUnsupportedEngine is returned for engines whose memory use is not a
// function of the model: vLLM, SGLang and TGI pre-allocate a fraction of the
// whole GPU for their KV cache, so a task for them must state vram_mib.
var ErrUnsupportedEngine = errors.New("VRAM estimate not supported for this engine")

// Params are the launch settings that change memory use.
type Params struct {
	Engine string // llamacpp (default) or ollama
	Ctx    int    // context per slot; 0 = the model's trained context
	Slots  int    // parallel sequences; 0 = 1
	// KVType is the KV cache element type: f16 (default), f32 or q8_0.
	KVType string
	UBatch int // 0 = DefaultUBatch
}

// Estimate is an estimate with its parts, in bytes.
type Estimate struct {
	Engine string `json:"engine"`

	Weights  uint64 `json:"weights_bytes"`
	KVCache  uint64 `json:"kv_cache_bytes"`
	Compute  uint64 `json:"compute_bytes"`
	Overhead uint64 `json:"overhead_bytes"`
	Margin   uint64 `json:"margin_bytes"`
	Total    uint64 `json:"total_bytes"`

	// The inputs the figures came from, so a wrong estimate can be traced.
	Layers   uint64 `json:"layers"`
	Embd     uint64 `json:"embd"`
	FF       uint64 `json:"ff"`
	Heads    uint64 `json:"heads"`
	KVHeads  uint64 `json:"kv_heads"`
	HeadDimK uint64 `json:"head_dim_k"`
	HeadDimV uint64 `json:"head_dim_v"`
	Vocab    uint64 `json:"vocab"`
	CtxTotal uint64 `json:"ctx_total"`
	UBatch   uint64 `json:"ubatch"`
	KVType   string `json:"kv_type"`
}

// TotalMiB is the total rounded up to whole MiB, the unit tasks use.
func (e Estimate) TotalMiB() int { return int((e.Total + MiB - 1) / MiB) }

// FromFile reads a GGUF file's header (not its tensor data) and estimates.
func FromFile(path string, p Params) (Estimate, error) {
	gf, err := gguf.ParseGGUFFile(path, gguf.SkipLargeMetadata())
	if err != nil {
		return Estimate{}, fmt.Errorf("read GGUF header of %s: %w", path, err)
	}
	return FromGGUF(gf, p)
}

// FromGGUF estimates from a parsed header.
func FromGGUF(gf *gguf.GGUFFile, p Params) (Estimate, error) {
	engine := p.Engine
	if engine == "" {
		engine = "llamacpp"
	}
	overhead, ok := runtimeOverhead[engine]
	if !ok {
		return Estimate{}, fmt.Errorf("engine %q: %w (it reserves a fraction of the whole GPU; set vram_mib in the task instead)", engine, ErrUnsupportedEngine)
	}
	kvBytes, kvType, err := kvElementSize(p.KVType)
	if err != nil {
		return Estimate{}, err
	}
	a := gf.Architecture()
	if a.BlockCount == 0 || a.EmbeddingLength == 0 || a.AttentionHeadCount == 0 {
		return Estimate{}, fmt.Errorf("GGUF header lacks block_count, embedding_length or attention.head_count (architecture %q)", a.Architecture)
	}
	e := Estimate{
		Engine:  engine,
		Weights: gf.TensorInfos.Bytes(),
		Layers:  a.BlockCount,
		Embd:    a.EmbeddingLength,
		Heads:   a.AttentionHeadCount,
		KVHeads: a.AttentionHeadCountKV,
		Vocab:   a.VocabularyLength,
		KVType:  kvType,
	}
	if e.KVHeads == 0 {
		e.KVHeads = e.Heads
	}
	if len(a.FeedForwardLength) > 0 {
		e.FF = a.FeedForwardLength[0]
	}
	e.HeadDimK, e.HeadDimV = uint64(a.AttentionKeyLength), uint64(a.AttentionValueLength)
	if e.HeadDimK == 0 {
		e.HeadDimK = e.Embd / e.Heads
	}
	if e.HeadDimV == 0 {
		e.HeadDimV = e.Embd / e.Heads
	}
	ctx := uint64(p.Ctx)
	if ctx == 0 {
		ctx = a.MaximumContextLength
	}
	slots := uint64(max(p.Slots, 1))
	e.CtxTotal = ctx * slots
	e.UBatch = uint64(p.UBatch)
	if e.UBatch == 0 {
		e.UBatch = DefaultUBatch
	}
	e.UBatch = min(e.UBatch, e.CtxTotal)

	kvElems := e.Layers * e.CtxTotal * e.KVHeads * (e.HeadDimK + e.HeadDimV)
	e.KVCache = uint64(math.Ceil(float64(kvElems) * kvBytes))
	logits := e.Vocab * e.UBatch * 4
	kq := e.Heads * e.UBatch * e.CtxTotal * 4
	acts := e.UBatch * (4*e.Embd + 2*e.FF) * 4
	e.Compute = logits + kq + acts
	e.Overhead = overhead
	variable := e.Weights + e.KVCache + e.Compute
	e.Margin = variable * MarginPercent / 100
	e.Total = variable + e.Margin + e.Overhead
	return e, nil
}

func kvElementSize(t string) (float64, string, error) {
	switch strings.ToLower(t) {
	case "", "f16":
		return 2, "f16", nil
	case "f32":
		return 4, "f32", nil
	case "q8_0":
		return 34.0 / 32.0, "q8_0", nil // 32 int8 + one f16 scale per block
	}
	return 0, "", fmt.Errorf("kv type %q: want f16, f32 or q8_0", t)
}

// Compare returns the estimate's error against a measured figure in percent:
// positive when the estimate was too high.
func Compare(e Estimate, measuredMiB int) float64 {
	if measuredMiB <= 0 {
		return math.NaN()
	}
	return (float64(e.Total)/MiB - float64(measuredMiB)) / float64(measuredMiB) * 100
}

// Table renders the parts for people.
func (e Estimate) Table() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(name string, v uint64, how string) {
		fmt.Fprintf(w, "%s\t%.1f MiB\t  %s\n", name, float64(v)/MiB, how)
	}
	row("weights", e.Weights, "sum of tensor sizes")
	row("kv cache", e.KVCache, fmt.Sprintf("%d layers × %d ctx × %d kv heads × (%d+%d) × %s", e.Layers, e.CtxTotal, e.KVHeads, e.HeadDimK, e.HeadDimV, e.KVType))
	row("compute", e.Compute, fmt.Sprintf("logits + KQ + activations at ubatch %d", e.UBatch))
	row("overhead", e.Overhead, e.Engine+" runtime on the GPU")
	row("margin", e.Margin, fmt.Sprintf("%d%% of weights+kv+compute", MarginPercent))
	row("total", e.Total, fmt.Sprintf("= %d MiB", e.TotalMiB()))
	w.Flush()
	return b.String()
}

// LogMessage is the message of the log line that compares an estimate with
// what a running engine holds; one line per task, once the engine is ready,
// so `grep 'vram estimate vs measured'` over driver logs gives the error
// distribution across models and settings.
const LogMessage = "vram estimate vs measured"

// LogFields are that line's hclog key/value pairs: estimate_mib,
// measured_mib, error_pct (positive = estimate too high, one decimal), and
// each part in MiB (one decimal) so a bad estimate shows which part was off.
func LogFields(e Estimate, measuredMiB int) []any {
	return []any{
		"engine", e.Engine,
		"estimate_mib", e.TotalMiB(),
		"measured_mib", measuredMiB,
		"error_pct", round1(Compare(e, measuredMiB)),
		"weights_mib", mib1(e.Weights),
		"kv_cache_mib", mib1(e.KVCache),
		"compute_mib", mib1(e.Compute),
		"overhead_mib", mib1(e.Overhead),
		"margin_mib", mib1(e.Margin),
		"ctx_total", e.CtxTotal,
		"kv_type", e.KVType,
	}
}

// Summary is the same comparison in one line for people (task events):
//
//	VRAM estimate 295 MiB, measured 280 MiB (+5.4%): weights 0.5, kv 2.0, compute 33.7, overhead 256.0, margin 1.8 MiB
func Summary(e Estimate, measuredMiB int) string {
	return fmt.Sprintf("VRAM estimate %d MiB, measured %d MiB (%+.1f%%): weights %.1f, kv %.1f, compute %.1f, overhead %.1f, margin %.1f MiB",
		e.TotalMiB(), measuredMiB, Compare(e, measuredMiB),
		mib1(e.Weights), mib1(e.KVCache), mib1(e.Compute), mib1(e.Overhead), mib1(e.Margin))
}

func mib1(b uint64) float64 { return round1(float64(b) / MiB) }

func round1(f float64) float64 { return math.Round(f*10) / 10 }
