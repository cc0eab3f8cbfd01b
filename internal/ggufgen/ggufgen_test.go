package ggufgen

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"
)

func write(t *testing.T, o Options) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.gguf")
	if err := Write(p, o); err != nil {
		t.Fatalf("Write: %v", err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, b
}

func TestDefaultModelParses(t *testing.T) {
	o := DefaultOptions()
	p, b := write(t, o)
	f, err := gguf.ParseGGUFFile(p)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if f.Header.Version != gguf.GGUFVersionV3 {
		t.Errorf("version %v, want 3", f.Header.Version)
	}
	if f.TensorDataStartOffset%alignment != 0 {
		t.Errorf("tensor data starts at %d, not %d-aligned", f.TensorDataStartOffset, alignment)
	}
	md := f.Header.MetadataKV
	wantU32 := map[string]uint32{
		"llama.context_length": 2048, "llama.embedding_length": 64, "llama.block_count": 2,
		"llama.feed_forward_length": 128, "llama.attention.head_count": 4,
		"llama.attention.head_count_kv": 4, "llama.vocab_size": 381, "general.alignment": 32,
		"llama.rope.dimension_count": 16, "general.file_type": 0,
		"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
	}
	for k, want := range wantU32 {
		kv, ok := md.Get(k)
		if !ok {
			t.Errorf("metadata %s missing", k)
			continue
		}
		if got := kv.ValueUint32(); got != want {
			t.Errorf("%s = %d, want %d", k, got, want)
		}
	}
	for k, want := range map[string]string{"general.architecture": "llama", "tokenizer.ggml.model": "llama", "general.name": "llorch-tiny"} {
		if kv, ok := md.Get(k); !ok || kv.ValueString() != want {
			t.Errorf("%s = %v, want %q", k, kv.Value, want)
		}
	}
	if kv, ok := md.Get("tokenizer.chat_template"); !ok || !strings.Contains(kv.ValueString(), "<|im_start|>assistant\n") {
		t.Errorf("chat template missing or not ChatML")
	}
	toks, _ := md.Get("tokenizer.ggml.tokens")
	arr := toks.ValueArray()
	if arr.Len != 381 {
		t.Fatalf("tokens: %d, want 381", arr.Len)
	}
	seen := map[string]bool{}
	for _, s := range arr.ValuesString() {
		if seen[s] {
			t.Errorf("duplicate token %q", s)
		}
		seen[s] = true
	}
	if got := arr.ValuesString()[newlineToken]; got != "<0x0A>" {
		t.Errorf("newline token is %q", got)
	}

	if len(f.TensorInfos) != 3+9*2 {
		t.Fatalf("%d tensors, want 21", len(f.TensorInfos))
	}
	shapes := map[string][]uint64{
		"token_embd.weight": {64, 381}, "output.weight": {64, 381}, "output_norm.weight": {64},
		"blk.1.attn_k.weight": {64, 64}, "blk.0.ffn_down.weight": {128, 64}, "blk.0.ffn_gate.weight": {64, 128},
	}
	var params uint64
	for _, ti := range f.TensorInfos {
		params += ti.Elements()
		if ti.Type != gguf.GGMLTypeF32 {
			t.Errorf("%s type %v, want F32", ti.Name, ti.Type)
		}
		if want, ok := shapes[ti.Name]; ok && !equalU64(ti.Dimensions, want) {
			t.Errorf("%s dims %v, want %v", ti.Name, ti.Dimensions, want)
		}
	}
	if params != o.Params() || params < 130_000 || params > 132_000 {
		t.Errorf("params %d (Params() %d), want ~131K", params, o.Params())
	}
	last := f.TensorInfos[len(f.TensorInfos)-1]
	if end := uint64(f.TensorDataStartOffset) + last.Offset + last.Bytes(); end != uint64(len(b)) {
		t.Errorf("file is %d bytes, last tensor ends at %d", len(b), end)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDeterministic(t *testing.T) {
	o := DefaultOptions()
	_, a := write(t, o)
	_, b := write(t, o)
	if !bytes.Equal(a, b) {
		t.Fatal("same options gave different files")
	}
	o.Seed = 2
	_, c := write(t, o)
	if bytes.Equal(a, c) {
		t.Fatal("different seeds gave the same file")
	}
}

func TestTensorTypesAndShapes(t *testing.T) {
	for _, tc := range []struct {
		typ  TensorType
		want gguf.GGMLType
	}{{F16, gguf.GGMLTypeF16}, {Q8_0, gguf.GGMLTypeQ8_0}} {
		o := DefaultOptions()
		o.Type = tc.typ
		o.Embd, o.Heads, o.KVHeads, o.Layers, o.FF = 128, 8, 2, 3, 256
		p, b := write(t, o)
		f, err := gguf.ParseGGUFFile(p)
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.typ, err)
		}
		for _, ti := range f.TensorInfos {
			want := tc.want
			if len(ti.Dimensions) == 1 {
				want = gguf.GGMLTypeF32 // norms stay F32
			}
			if ti.Type != want {
				t.Errorf("%s: %s type %v, want %v", tc.typ, ti.Name, ti.Type, want)
			}
			if ti.Name == "blk.2.attn_v.weight" && !equalU64(ti.Dimensions, []uint64{128, 32}) {
				t.Errorf("GQA attn_v dims %v, want [128 32]", ti.Dimensions)
			}
		}
		last := f.TensorInfos[len(f.TensorInfos)-1]
		if end := uint64(f.TensorDataStartOffset) + last.Offset + last.Bytes(); end != uint64(len(b)) {
			t.Errorf("%s: file is %d bytes, last tensor ends at %d", tc.typ, len(b), end)
		}
	}
}

func TestValidateNamesField(t *testing.T) {
	cases := map[string]func(*Options){
		"embd":       func(o *Options) { o.Embd = 0 },
		"kv_heads":   func(o *Options) { o.KVHeads = 3 },
		"vocab":      func(o *Options) { o.Vocab = 100 },
		"stop_after": func(o *Options) { o.StopAfter = 10_000 },
		"q8_0 needs embd": func(o *Options) {
			o.Type, o.Embd, o.Heads, o.KVHeads = Q8_0, 48, 4, 4
		},
		"tensor type": func(o *Options) { o.Type = "q4_k" },
	}
	for want, mut := range cases {
		o := DefaultOptions()
		mut(&o)
		err := Write(filepath.Join(t.TempDir(), "x.gguf"), o)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got error %v", want, err)
		}
	}
}

func TestF16Conversion(t *testing.T) {
	for f, want := range map[float32]uint16{
		0: 0, 1: 0x3c00, -2: 0xc000, 0.1: 0x2e66, 65504: 0x7bff, 1e6: 0x7c00,
		float32(math.Ldexp(1, -24)): 0x0001, float32(math.Ldexp(1, -14)): 0x0400,
		1 + 1.0/2048: 0x3c00, // halfway: ties to even
		1 + 3.0/2048: 0x3c02,
	} {
		if got := f32ToF16(f); got != want {
			t.Errorf("f32ToF16(%g) = %#04x, want %#04x", f, got, want)
		}
	}
}

func TestQ8_0Block(t *testing.T) {
	x := make([]float32, 32)
	for i := range x {
		x[i] = float32(i-16) / 4 // max |x| = 4
	}
	b := quantizeQ8_0(x)
	if len(b) != 34 {
		t.Fatalf("block is %d bytes, want 34", len(b))
	}
	if d := binary.LittleEndian.Uint16(b); d != f32ToF16(4.0/127) {
		t.Errorf("scale %#04x, want %#04x", d, f32ToF16(4.0/127))
	}
	if q := int8(b[2]); q != -127 {
		t.Errorf("q[0] = %d, want -127", q)
	}
	if q := int8(b[2+16]); q != 0 {
		t.Errorf("q[16] = %d, want 0", q)
	}
}
