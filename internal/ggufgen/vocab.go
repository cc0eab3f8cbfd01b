package ggufgen

import "fmt"

// Token types as llama.cpp's SentencePiece vocabulary reads them.
const (
	typeNormal  int32 = 1
	typeUnknown int32 = 2
	typeControl int32 = 3
	typeByte    int32 = 6
)

// spaceMark is SentencePiece's word-start marker (U+2581).
const spaceMark = "\u2581"

// sentence is what the model answers: the pieces greedy (and llama-server's
// default min-p) sampling walks after the chat prompt's final "\n". Each
// piece occurs once, so the chain from one piece to the next is unambiguous;
// the first has no word-start marker so the reply does not begin with a
// space. The pieces come first in the vocabulary, so even a small vocab holds
// a prefix of it.
var sentence = []string{
	"Hello", spaceMark + "from", spaceMark + "llorch", "!", spaceMark + "This", spaceMark + "tiny",
	spaceMark + "model", spaceMark + "answers", spaceMark + "through", spaceMark + "a", spaceMark + "real",
	spaceMark + "engine", ",", spaceMark + "routed", spaceMark + "by", spaceMark + "your", spaceMark + "own",
	spaceMark + "fleet", ".",
}

// SentenceText is the demo model's reply (the default StopAfter tokens).
const SentenceText = "Hello from llorch! This tiny model answers through a real engine, routed by your own fleet."

// words give the generated text a readable look; any unique strings would do.
var words = []string{
	"the", "of", "and", "to", "in", "is", "it", "that", "for", "on",
	"with", "as", "was", "at", "by", "be", "this", "from", "or", "an",
	"are", "not", "but", "had", "have", "one", "all", "were", "they", "which",
	"you", "she", "there", "can", "more", "their", "said", "if", "will", "each",
	"about", "how", "up", "out", "them", "then", "many", "some", "so", "these",
	"would", "other", "into", "has", "her", "two", "like", "him", "see", "time",
	"could", "no", "make", "than", "first", "been", "its", "who", "now", "people",
	"my", "made", "over", "did", "down", "only", "way", "find", "use", "may",
	"water", "long", "little", "very", "after", "called", "just", "where", "most", "know",
	"get", "through", "back", "much", "before", "go", "good", "new", "write", "our",
	"used", "me", "man", "too", "any", "day", "same", "right", "look", "think",
	"also", "around", "another", "came", "come", "work", "three", "word", "must", "because",
	"does", "part", "even", "place", "well", "such", "here", "take", "why", "things",
	"help", "put", "years", "different", "away", "again", "off", "went", "old", "number",
	"model", "token", "engine", "node", "pool", "route", "queue", "slot", "cache", "tensor",
}

type vocab struct {
	tokens []string
	types  []int32
	scores []float32
	// allowed are the tokens greedy output may contain: normal pieces and
	// printable ASCII byte tokens, so output is always valid UTF-8 and
	// JSON-safe.
	allowed []int
	index   map[string]int // normal piece → token id
}

// sentenceTokens is the longest prefix of sentence this vocab can spell:
// each piece as its own token, a one-character piece missing from a small
// vocab as its byte token.
func (v vocab) sentenceTokens() []int {
	var out []int
	for _, p := range sentence {
		id, ok := v.index[p]
		switch {
		case ok:
		case len(p) == 1:
			id = firstByte + int(p[0])
		default:
			return out
		}
		out = append(out, id)
	}
	return out
}

// buildVocab lays out <unk>, <s>, </s>, the 256 byte tokens, then normal
// pieces: "▁", each printable ASCII character, "▁word" pieces and, past the
// word list, synthetic "▁wN" pieces until size is reached.
func buildVocab(size int) vocab {
	v := vocab{}
	add := func(s string, t int32, score float32) {
		v.tokens = append(v.tokens, s)
		v.types = append(v.types, t)
		v.scores = append(v.scores, score)
	}
	add("<unk>", typeUnknown, 0)
	add("<s>", typeControl, 0)
	add("</s>", typeControl, 0)
	for b := 0; b < 256; b++ {
		add(fmt.Sprintf("<0x%02X>", b), typeByte, 0)
		if b > 0x20 && b < 0x7f {
			v.allowed = append(v.allowed, len(v.tokens)-1)
		}
	}
	var pieces []string
	seen := map[string]bool{}
	piece := func(p string) {
		if !seen[p] {
			seen[p] = true
			pieces = append(pieces, p)
		}
	}
	piece(spaceMark)
	for _, p := range sentence {
		if len(p) > 1 { // one-character pieces come with the ASCII set below
			piece(p)
		}
	}
	for c := byte(0x21); c < 0x7f; c++ {
		piece(string(c))
	}
	for _, w := range words {
		piece(spaceMark + w)
	}
	for i := 0; len(pieces) < size-firstPiece; i++ {
		pieces = append(pieces, fmt.Sprintf("%sw%d", spaceMark, i))
	}
	pieces = pieces[:size-firstPiece]
	v.index = map[string]int{}
	for i, p := range pieces {
		v.index[p] = firstPiece + i
		// SentencePiece prefers higher scores; longer pieces win merges.
		add(p, typeNormal, float32(-i)/float32(len(pieces))+float32(len([]rune(p))))
		v.allowed = append(v.allowed, len(v.tokens)-1)
	}
	return v
}

// newlineToken is the byte token for "\n": a ChatML prompt ends with it, so
// it is where the cycle starts.
const newlineToken = firstByte + '\n'
