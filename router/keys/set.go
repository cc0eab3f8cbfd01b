package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"unsafe"
)

// Set is an immutable key set, indexed by digest. Build one with NewSet;
// replace it as a whole on reload.
type Set struct {
	// byDigest also holds a decoy entry under present; absent is a digest
	// it does not hold. Every lookup probes one of them as well (see
	// Lookup).
	present, absent [sha256.Size]byte
	byDigest        map[[sha256.Size]byte]*Key
	byName          map[string]*Key
	names           []string // in the order given
}

// decoy is what a lookup that found nothing compares against, so a miss
// does the same work as a hit.
var decoy [sha256.Size]byte

// NewSet validates keys and indexes them; names and digests must be
// unique.
func NewSet(keys []Key) (*Set, error) {
	s := &Set{byDigest: make(map[[sha256.Size]byte]*Key, 8*len(keys)+8), byName: make(map[string]*Key, len(keys))}
	for i := range keys {
		k := keys[i]
		if err := k.validate(); err != nil {
			return nil, err
		}
		if _, dup := s.byName[k.Name]; dup {
			return nil, fmt.Errorf("key name %q appears twice", k.Name)
		}
		if other, dup := s.byDigest[k.digest]; dup {
			return nil, fmt.Errorf("keys %q and %q have the same digest (one secret, two names)", other.Name, k.Name)
		}
		kp := &k
		s.byDigest[k.digest] = kp
		s.byName[k.Name] = kp
		s.names = append(s.names, k.Name)
	}
	for {
		if _, err := rand.Read(s.present[:]); err != nil {
			return nil, fmt.Errorf("key set: no randomness: %w", err)
		}
		if _, err := rand.Read(s.absent[:]); err != nil {
			return nil, fmt.Errorf("key set: no randomness: %w", err)
		}
		_, p := s.byDigest[s.present]
		_, a := s.byDigest[s.absent]
		if !p && !a && s.present != s.absent {
			break
		}
	}
	s.byDigest[s.present] = decoyKey
	return s, nil
}

// Len is the number of keys.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.names)
}

// Names lists the keys' names in configuration order.
func (s *Set) Names() []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s.names...)
}

// Get is the key called name.
func (s *Set) Get(name string) *Key {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// Lookup finds the key whose secret is token. It hashes the token in place
// (no allocation whose size follows the input), looks the digest up, and
// compares the found digest with the computed one in constant time; a miss
// compares against a decoy, so hit and miss cost the same.
func (s *Set) Lookup(token string) (*Key, bool) {
	if s == nil || s.byDigest == nil {
		return nil, false
	}
	d := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
	k := s.byDigest[d]
	// A map hit costs more than a miss (it compares the whole key), so
	// every lookup makes one of each: a hit probes the absent digest, a
	// miss the decoy entry.
	hit := 0
	if k != nil && k != decoyKey {
		hit = 1
	}
	probe := s.present
	subtle.ConstantTimeCopy(hit, probe[:], s.absent[:])
	balance := s.byDigest[probe] // the decoy after a miss, nil after a hit
	ref := &decoy
	if hit == 1 {
		ref = &k.digest
	}
	if subtle.ConstantTimeCompare(d[:], ref[:]) != 1 || hit == 0 || (balance == nil) != (hit == 1) {
		return nil, false
	}
	return k, true
}

// SecretPrefix starts every secret `llorch key new` makes, so secret
// scanners (and people) can tell a llorch key.
const SecretPrefix = "llk_"

// NewSecret is a fresh random secret: "llk_" and 32 random bytes in
// unpadded base64url.
func NewSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new key secret: %w", err)
	}
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}
