// The byte level of the GGUF file: little-endian values, alignment padding,
// and tensor data in F32, F16 and Q8_0.

package ggufgen

import (
	"encoding/binary"
	"io"
	"math"
)

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

func (e *enc) u32(x uint32) { binary.LittleEndian.PutUint32(e.buf[:4], x); e.raw(e.buf[:4]) }

func (e *enc) u64(x uint64) { binary.LittleEndian.PutUint64(e.buf[:8], x); e.raw(e.buf[:8]) }

func (e *enc) f32(x float32) { e.u32(math.Float32bits(x)) }

func (e *enc) str(s string) { e.u64(uint64(len(s))); e.raw([]byte(s)) }

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
