// Package authmin is llorch's minimal authentication: constant-time token
// checks, strict Bearer parsing, token fingerprints for logs, the HTTP
// middleware every llorch endpoint sits behind, and the startup policy that
// refuses a non-loopback bind without a strong token.
//
// The predecessor paused a migration over a timing-unsafe comparison; the
// rules here are stricter: comparisons leak neither content nor length, and
// a raw token never reaches a log line, an error body or a metric label.
package authmin

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// compareKey keys the HMAC that TimingSafeEqual compares. It is random per
// process, so an attacker cannot precompute inputs whose digests share a
// prefix.
var compareKey = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("authmin: no randomness for the comparison key: " + err.Error())
	}
	return k
}()

// The HMAC pads of compareKey (RFC 2104), computed once: digest is then two
// SHA-256 sums and no allocation.
var ipad, opad = func() (i, o [sha256.BlockSize]byte) {
	copy(i[:], compareKey)
	copy(o[:], compareKey)
	for n := range i {
		i[n] ^= 0x36
		o[n] ^= 0x5c
	}
	return i, o
}()

// scratchPool holds the inner hash's input (ipad and the secret). The
// secret is copied into a pooled buffer, not a fresh one, so no
// allocation whose size follows the input's length enters the timed path;
// tokens are bounded by MaxTokenBytes where they come from the network.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, sha256.BlockSize+MaxTokenBytes); return &b }}

// digest is HMAC-SHA-256(compareKey, s).
func digest(s string) (out [sha256.Size]byte) {
	bp := scratchPool.Get().(*[]byte)
	buf := append(append((*bp)[:0], ipad[:]...), s...)
	inner := sha256.Sum256(buf)
	clear(buf)
	if cap(buf) <= sha256.BlockSize+MaxTokenBytes {
		*bp = buf[:0]
		scratchPool.Put(bp)
	}
	var outer [sha256.BlockSize + sha256.Size]byte
	copy(outer[:], opad[:])
	copy(outer[sha256.BlockSize:], inner[:])
	return sha256.Sum256(outer[:])
}

// Digest is a secret reduced for constant-time comparison
// (EqualDigest): store it instead of hashing the known secret per check.
type Digest [sha256.Size]byte

// DigestOf reduces a secret.
func DigestOf(s string) Digest { return digest(s) }

// EqualDigest compares a presented secret with a stored digest in time
// that depends on neither.
func EqualDigest(presented string, d Digest) bool {
	p := digest(presented)
	return subtle.ConstantTimeCompare(p[:], d[:]) == 1
}

// TimingSafeEqual compares two secrets in time that depends on neither
// their content nor whether their lengths differ: both are reduced to
// fixed-size HMAC-SHA-256 digests, which are compared with crypto/subtle.
// (subtle.ConstantTimeCompare alone returns early on a length mismatch.)
func TimingSafeEqual(a, b string) bool {
	da, db := digest(a), digest(b)
	return subtle.ConstantTimeCompare(da[:], db[:]) == 1
}

// MaxTokenBytes is the longest token ParseBearer accepts.
const MaxTokenBytes = 8 << 10

// Errors from ParseBearer. ErrMissing means there was nothing to check
// (MISSING_TOKEN); the others mean a malformed credential (BAD_TOKEN).
var (
	ErrMissing     = errors.New("no bearer token")
	ErrNotBearer   = errors.New("authorization scheme is not Bearer")
	ErrEmptyToken  = errors.New("empty bearer token")
	ErrTooLong     = fmt.Errorf("bearer token longer than %d bytes", MaxTokenBytes)
	ErrControlChar = errors.New("bearer token contains a control character")
)

// ParseBearer extracts the token from an Authorization header value: the
// value is trimmed, must start with the case-sensitive "Bearer ", and the
// token is trimmed again. Internal spaces are allowed; empty tokens, tokens
// over 8 KiB and any control character are not.
func ParseBearer(header string) (string, error) {
	h := strings.TrimSpace(header)
	if h == "" {
		return "", ErrMissing
	}
	if h == "Bearer" {
		return "", ErrEmptyToken
	}
	if !strings.HasPrefix(h, "Bearer ") {
		return "", ErrNotBearer
	}
	tok := strings.TrimSpace(h[len("Bearer "):])
	switch {
	case tok == "":
		return "", ErrEmptyToken
	case len(tok) > MaxTokenBytes:
		return "", ErrTooLong
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x20 || c == 0x7f {
			return "", ErrControlChar
		}
	}
	return tok, nil
}

// TokenFP6 is a token's fingerprint for logs: the first 6 lowercase hex
// digits of its SHA-256 ("test" → "9f86d0"). Inputs over 8 KiB are
// fingerprinted on their first 8 KiB.
func TokenFP6(token string) string {
	if len(token) > MaxTokenBytes {
		token = token[:MaxTokenBytes]
	}
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:3])
}

// Identity is how logs name a token: "token:9f86d0".
func Identity(token string) string { return "token:" + TokenFP6(token) }
