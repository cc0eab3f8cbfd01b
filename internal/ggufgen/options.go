// Package ggufgen writes tiny, deterministic llama-architecture GGUF models.
//
// No package on our CI machines ships a GGUF model, so tests and benchmarks
// generate one. The weights are not trained: the network is a bigram chain
// (the layers add only small noise to the residual, so the final hidden state
// is the current token's embedding, and the output matrix maps each token to
// the next one of a fixed cycle). After the chat prompt's final "\n" the
// cycle spells SentenceText, then runs on through the other printable tokens
// in seeded order; </s> comes after StopAfter tokens, so a chat request ends
// with finish_reason "stop" and the same readable text every time.
// Plain random weights would loop on one token instead (and Ollama aborts a
// generation after 30 identical tokens).
package ggufgen

import (
	"fmt"
	"strings"
)

// TensorType is the storage type of the 2-D weight tensors. Norm weights
// are always F32, as llama.cpp's own converters write them.
type TensorType string

const (
	F32  TensorType = "f32"
	F16  TensorType = "f16"
	Q8_0 TensorType = "q8_0"
)

// ParseTensorType accepts f32, f16 and q8_0 (any case).
func ParseTensorType(s string) (TensorType, error) {
	switch t := TensorType(strings.ToLower(s)); t {
	case F32, F16, Q8_0:
		return t, nil
	}
	return "", fmt.Errorf("tensor type %q: want one of f32, f16, q8_0", s)
}

// Options shape the generated model. The zero value is not useful; start
// from DefaultOptions.
type Options struct {
	Name string // general.name
	Seed uint64 // same seed and options → byte-identical file

	Vocab   int // total tokens: 3 control + 256 byte tokens + normal pieces
	Embd    int // embedding length
	Layers  int // transformer blocks
	Heads   int // attention heads
	KVHeads int // key/value heads (GQA when < Heads)
	FF      int // feed-forward length
	Ctx     int // trained context length

	Type TensorType

	// StopAfter is how many tokens greedy chat output has before </s>.
	// 0 keeps </s> out of the cycle: generation runs to max_tokens, which
	// is what benchmarks want.
	StopAfter int
}

// DefaultOptions is the facts file's tiny model: 131 K parameters, ~534 KB
// in F32, loads in llama-server and Ollama in well under a second, and
// answers SentenceText.
func DefaultOptions() Options {
	return Options{
		Name:      "llorch-tiny",
		Seed:      1,
		Vocab:     381,
		Embd:      64,
		Layers:    2,
		Heads:     4,
		KVHeads:   4,
		FF:        128,
		Ctx:       2048,
		Type:      F32,
		StopAfter: len(sentence),
	}
}

// Token ids fixed by the vocabulary layout.
const (
	tokUnk     = 0
	tokBOS     = 1
	tokEOS     = 2
	firstByte  = 3 // <0x00> .. <0xFF> follow
	firstPiece = firstByte + 256
)

// minNormalPieces keeps the cycle long enough to look like text.
const minNormalPieces = 16

// Validate names the first field that cannot produce a loadable model.
func (o Options) Validate() error {
	pos := func(name string, v int) error {
		if v <= 0 {
			return fmt.Errorf("ggufgen: %s must be > 0, got %d", name, v)
		}
		return nil
	}
	for _, f := range []struct {
		n string
		v int
	}{{"embd", o.Embd}, {"layers", o.Layers}, {"heads", o.Heads}, {"kv_heads", o.KVHeads}, {"ff", o.FF}, {"ctx", o.Ctx}} {
		if err := pos(f.n, f.v); err != nil {
			return err
		}
	}
	if o.Vocab < firstPiece+minNormalPieces {
		return fmt.Errorf("ggufgen: vocab must be >= %d (3 control + 256 byte tokens + %d pieces), got %d", firstPiece+minNormalPieces, minNormalPieces, o.Vocab)
	}
	if o.Embd%o.Heads != 0 {
		return fmt.Errorf("ggufgen: embd (%d) must be a multiple of heads (%d)", o.Embd, o.Heads)
	}
	if (o.Embd/o.Heads)%2 != 0 {
		return fmt.Errorf("ggufgen: head dimension embd/heads = %d must be even (RoPE rotates pairs)", o.Embd/o.Heads)
	}
	if o.Heads%o.KVHeads != 0 {
		return fmt.Errorf("ggufgen: heads (%d) must be a multiple of kv_heads (%d)", o.Heads, o.KVHeads)
	}
	if o.StopAfter < 0 {
		return fmt.Errorf("ggufgen: stop_after must be >= 0, got %d", o.StopAfter)
	}
	switch o.Type {
	case F32, F16:
	case Q8_0:
		// Q8_0 quantises rows in blocks of 32 along ne0: every 2-D weight's
		// first dimension is embd or ff.
		if o.Embd%q8Block != 0 {
			return fmt.Errorf("ggufgen: q8_0 needs embd to be a multiple of %d, got %d", q8Block, o.Embd)
		}
		if o.FF%q8Block != 0 {
			return fmt.Errorf("ggufgen: q8_0 needs ff to be a multiple of %d, got %d", q8Block, o.FF)
		}
	default:
		return fmt.Errorf("ggufgen: tensor type %q: want one of f32, f16, q8_0", o.Type)
	}
	if o.Name == "" {
		return fmt.Errorf("ggufgen: name must not be empty")
	}
	return nil
}
