package ggufgen

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// GGUF v3 constants (ggml's docs/gguf.md).
const (
	ggufMagic   = "GGUF"
	ggufVersion = 3
	alignment   = 32
)

// GGUF metadata value types.
const (
	vUint32  uint32 = 4
	vInt32   uint32 = 5
	vFloat32 uint32 = 6
	vBool    uint32 = 7
	vString  uint32 = 8
	vArray   uint32 = 9
)

// ggml tensor types and llama file types for each TensorType.
var (
	ggmlType = map[TensorType]uint32{F32: 0, F16: 1, Q8_0: 8}
	fileType = map[TensorType]uint32{F32: 0, F16: 1, Q8_0: 7}
)

const q8Block = 32

// chatML is the template both llama-server and Ollama recognise; its
// generation prompt ends in "\n", where the token cycle starts.
const chatML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

// Weight design constants (see the package comment).
const (
	layerStd = 0.02 // small, so the residual stays ~ the current token's embedding
	// Output row u = 0.2 * embedding(pred(u)): the right next token's logit
	// is ~0.2*embd (12.8 at embd 64), any other's ~N(0, 0.2²·embd) (σ 1.6),
	// so even llama-server's default sampling (temperature 0.8, min-p 0.05)
	// keeps only the right one.
	outputScale  = 0.2
	bannedLogit  = -20.0 // dim 0 of a banned token's output row
	rmsEpsilon   = 1e-5
	ropeFreqBase = 10000
)

type tensor struct {
	name string
	dims []uint64 // ne0 first
	typ  TensorType
	// fill produces the tensor's values, row-major with ne0 fastest.
	fill func() []float32
}

func (t tensor) elements() uint64 {
	n := uint64(1)
	for _, d := range t.dims {
		n *= d
	}
	return n
}

func (t tensor) bytes() uint64 {
	switch t.typ {
	case F16:
		return 2 * t.elements()
	case Q8_0:
		return t.elements() / q8Block * (2 + q8Block)
	}
	return 4 * t.elements()
}

// Write generates the model described by o and writes it to path
// (atomically: a temporary file in the same directory is renamed).
func Write(path string, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".ggufgen-*")
	if err != nil {
		return fmt.Errorf("ggufgen: create temp file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := encode(bw, o); err != nil {
		tmp.Close()
		return fmt.Errorf("ggufgen: write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("ggufgen: write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("ggufgen: chmod %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ggufgen: close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("ggufgen: rename to %s: %w", path, err)
	}
	return nil
}

// Params is the number of weights the model described by o has.
func (o Options) Params() uint64 {
	var n uint64
	for _, t := range layout(o, nil, nil) {
		n += t.elements()
	}
	return n
}

func encode(w io.Writer, o Options) error {
	v := buildVocab(o.Vocab)
	rng := rand.New(rand.NewPCG(o.Seed, 0x6c6c6f726368)) // "llorch"
	E, V := o.Embd, o.Vocab

	// Embeddings: N(0,1) with dim 0 fixed to 1, so dim 0 of the final
	// hidden state is a positive constant the output rows use as a bias.
	emb := make([]float32, V*E)
	for t := 0; t < V; t++ {
		emb[t*E] = 1
		for d := 1; d < E; d++ {
			emb[t*E+d] = float32(normal(rng))
		}
	}
	cycle, err := buildCycle(rng, v, o.StopAfter)
	if err != nil {
		return err
	}
	out := make([]float32, V*E)
	for t := 0; t < V; t++ {
		out[t*E] = bannedLogit
	}
	for i, tok := range cycle {
		pred := cycle[(i+len(cycle)-1)%len(cycle)]
		for d := 0; d < E; d++ {
			out[tok*E+d] = outputScale * emb[pred*E+d]
		}
	}

	tensors := layout(o, func() []float32 { return emb }, func() []float32 { return out })
	for i := range tensors {
		if tensors[i].fill == nil {
			n := tensors[i].elements()
			tensors[i].fill = func() []float32 {
				x := make([]float32, n)
				for j := range x {
					x[j] = float32(layerStd * normal(rng))
				}
				return x
			}
		}
	}

	e := &enc{w: w}
	e.raw([]byte(ggufMagic))
	e.u32(ggufVersion)
	e.u64(uint64(len(tensors)))
	kvs := metadata(o, v)
	e.u64(uint64(len(kvs)))
	for _, kv := range kvs {
		e.str(kv.key)
		kv.write(e)
	}
	var off uint64
	for _, t := range tensors {
		e.str(t.name)
		e.u32(uint32(len(t.dims)))
		for _, d := range t.dims {
			e.u64(d)
		}
		e.u32(ggmlType[t.typ])
		e.u64(off)
		off = alignUp(off + t.bytes())
	}
	e.pad()
	for _, t := range tensors {
		e.tensorData(t)
		e.pad()
	}
	return e.err
}

// layout lists the tensors in file order. emb and out fill token_embd and
// output; nil fill functions are random layer weights, filled by the caller
// in this order so the RNG stream (and the file) is deterministic.
func layout(o Options, emb, out func() []float32) []tensor {
	E, V, F := uint64(o.Embd), uint64(o.Vocab), uint64(o.FF)
	kv := uint64(o.KVHeads) * (E / uint64(o.Heads))
	ones := func(n uint64) func() []float32 {
		return func() []float32 {
			x := make([]float32, n)
			for i := range x {
				x[i] = 1
			}
			return x
		}
	}
	ts := []tensor{
		{name: "token_embd.weight", dims: []uint64{E, V}, typ: o.Type, fill: emb},
		{name: "output_norm.weight", dims: []uint64{E}, typ: F32, fill: ones(E)},
		{name: "output.weight", dims: []uint64{E, V}, typ: o.Type, fill: out},
	}
	for l := 0; l < o.Layers; l++ {
		p := fmt.Sprintf("blk.%d.", l)
		ts = append(ts,
			tensor{name: p + "attn_norm.weight", dims: []uint64{E}, typ: F32, fill: ones(E)},
			tensor{name: p + "attn_q.weight", dims: []uint64{E, E}, typ: o.Type},
			tensor{name: p + "attn_k.weight", dims: []uint64{E, kv}, typ: o.Type},
			tensor{name: p + "attn_v.weight", dims: []uint64{E, kv}, typ: o.Type},
			tensor{name: p + "attn_output.weight", dims: []uint64{E, E}, typ: o.Type},
			tensor{name: p + "ffn_norm.weight", dims: []uint64{E}, typ: F32, fill: ones(E)},
			tensor{name: p + "ffn_gate.weight", dims: []uint64{E, F}, typ: o.Type},
			tensor{name: p + "ffn_up.weight", dims: []uint64{E, F}, typ: o.Type},
			tensor{name: p + "ffn_down.weight", dims: []uint64{F, E}, typ: o.Type},
		)
	}
	return ts
}

// buildCycle orders the allowed tokens into one cycle: "\n" → the
// sentence's tokens → the other printable tokens in seeded order → back to
// "\n", with </s> inserted after the first stopAfter tokens of that walk.
// With stopAfter 0 </s> stays out, so generation never ends by itself.
func buildCycle(rng *rand.Rand, v vocab, stopAfter int) ([]int, error) {
	head := v.sentenceTokens()
	inHead := map[int]bool{}
	for _, t := range head {
		inHead[t] = true
	}
	var toks []int
	for _, t := range v.allowed {
		if !inHead[t] {
			toks = append(toks, t)
		}
	}
	if stopAfter > len(head)+len(toks) {
		return nil, fmt.Errorf("ggufgen: stop_after %d exceeds the %d printable tokens of a vocab of %d", stopAfter, len(head)+len(toks), len(v.tokens))
	}
	// Fisher-Yates on the raw PCG stream: stable across Go releases, unlike
	// helpers whose algorithm the standard library may change.
	for i := len(toks) - 1; i > 0; i-- {
		j := int(rng.Uint64() % uint64(i+1))
		toks[i], toks[j] = toks[j], toks[i]
	}
	walk := append(head, toks...)
	cycle := []int{newlineToken}
	if stopAfter == 0 {
		return append(cycle, walk...), nil
	}
	cycle = append(cycle, walk[:stopAfter]...)
	cycle = append(cycle, tokEOS)
	return append(cycle, walk[stopAfter:]...), nil
}

// normal draws N(0,1) by Box-Muller from the PCG stream (again: a fixed
// algorithm, so a seed means the same file on every Go version).
func normal(r *rand.Rand) float64 {
	u1 := (float64(r.Uint64()>>11) + 1) / (1 << 53) // (0,1]
	u2 := float64(r.Uint64()>>11) / (1 << 53)
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}

type kv struct {
	key   string
	write func(e *enc)
}

func metadata(o Options, v vocab) []kv {
	u32 := func(k string, x uint32) kv {
		return kv{k, func(e *enc) { e.u32(vUint32); e.u32(x) }}
	}
	f32 := func(k string, x float32) kv {
		return kv{k, func(e *enc) { e.u32(vFloat32); e.f32(x) }}
	}
	str := func(k, s string) kv {
		return kv{k, func(e *enc) { e.u32(vString); e.str(s) }}
	}
	boolean := func(k string, b bool) kv {
		return kv{k, func(e *enc) {
			e.u32(vBool)
			if b {
				e.raw([]byte{1})
			} else {
				e.raw([]byte{0})
			}
		}}
	}
	kvs := []kv{
		str("general.architecture", "llama"),
		str("general.name", o.Name),
		u32("general.alignment", alignment),
		u32("general.file_type", fileType[o.Type]),
	}
	if o.Type == Q8_0 {
		kvs = append(kvs, u32("general.quantization_version", 2))
	}
	kvs = append(kvs,
		u32("llama.vocab_size", uint32(o.Vocab)),
		u32("llama.context_length", uint32(o.Ctx)),
		u32("llama.embedding_length", uint32(o.Embd)),
		u32("llama.block_count", uint32(o.Layers)),
		u32("llama.feed_forward_length", uint32(o.FF)),
		u32("llama.attention.head_count", uint32(o.Heads)),
		u32("llama.attention.head_count_kv", uint32(o.KVHeads)),
		f32("llama.attention.layer_norm_rms_epsilon", rmsEpsilon),
		f32("llama.rope.freq_base", ropeFreqBase),
		u32("llama.rope.dimension_count", uint32(o.Embd/o.Heads)),
		str("tokenizer.ggml.model", "llama"),
		kv{"tokenizer.ggml.tokens", func(e *enc) {
			e.u32(vArray)
			e.u32(vString)
			e.u64(uint64(len(v.tokens)))
			for _, s := range v.tokens {
				e.str(s)
			}
		}},
		kv{"tokenizer.ggml.scores", func(e *enc) {
			e.u32(vArray)
			e.u32(vFloat32)
			e.u64(uint64(len(v.scores)))
			for _, s := range v.scores {
				e.f32(s)
			}
		}},
		kv{"tokenizer.ggml.token_type", func(e *enc) {
			e.u32(vArray)
			e.u32(vInt32)
			e.u64(uint64(len(v.types)))
			for _, t := range v.types {
				e.u32(uint32(t))
			}
		}},
		u32("tokenizer.ggml.unknown_token_id", tokUnk),
		u32("tokenizer.ggml.bos_token_id", tokBOS),
		u32("tokenizer.ggml.eos_token_id", tokEOS),
		boolean("tokenizer.ggml.add_bos_token", true),
		boolean("tokenizer.ggml.add_eos_token", false),
		str("tokenizer.chat_template", chatML),
	)
	return kvs
}

func alignUp(n uint64) uint64 { return (n + alignment - 1) / alignment * alignment }

// enc writes little-endian GGUF fields, remembering the first error and
// the offset (for alignment padding).
type enc struct {
	w   io.Writer
	n   uint64
	err error
	buf [8]byte
}

func (e *enc) raw(b []byte) {
	if e.err != nil {
		return
	}
	var k int
	k, e.err = e.w.Write(b)
	e.n += uint64(k)
}

func (e *enc) u32(x uint32)  { binary.LittleEndian.PutUint32(e.buf[:4], x); e.raw(e.buf[:4]) }
func (e *enc) u64(x uint64)  { binary.LittleEndian.PutUint64(e.buf[:8], x); e.raw(e.buf[:8]) }
func (e *enc) f32(x float32) { e.u32(math.Float32bits(x)) }
func (e *enc) str(s string)  { e.u64(uint64(len(s))); e.raw([]byte(s)) }

func (e *enc) pad() {
	if p := alignUp(e.n) - e.n; p > 0 {
		e.raw(make([]byte, p))
	}
}

func (e *enc) tensorData(t tensor) {
	x := t.fill()
	var b []byte
	switch t.typ {
	case F32:
		b = make([]byte, 4*len(x))
		for i, f := range x {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
		}
	case F16:
		b = make([]byte, 2*len(x))
		for i, f := range x {
			binary.LittleEndian.PutUint16(b[2*i:], f32ToF16(f))
		}
	case Q8_0:
		b = quantizeQ8_0(x)
	}
	e.raw(b)
}

// quantizeQ8_0 follows ggml's reference quantiser: per block of 32, scale
// d = max|x|/127 stored as f16, then 32 int8 values round(x/d).
func quantizeQ8_0(x []float32) []byte {
	out := make([]byte, 0, len(x)/q8Block*(2+q8Block))
	for i := 0; i < len(x); i += q8Block {
		blk := x[i : i+q8Block]
		var amax float32
		for _, f := range blk {
			amax = max(amax, float32(math.Abs(float64(f))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		out = binary.LittleEndian.AppendUint16(out, f32ToF16(d))
		for _, f := range blk {
			out = append(out, byte(int8(math.Round(float64(f*id)))))
		}
	}
	return out
}

// f32ToF16 converts to IEEE 754 half precision, rounding to nearest even.
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - e)
		h := mant >> shift
		rem := mant & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry into the exponent is the correct rounding (up to inf)
	}
	return sign | uint16(h)
}
