// Package catalog fingerprints a node's model directory: which models the
// node holds, their sizes and digests. The driver reports the result as
// Nomad node attributes (so jobs can constrain on "model present") and as
// Consul meta of the node's engines (so the router can answer availability
// questions); both encodings live here so they stay the same everywhere.
package catalog

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Entry is one model on the node.
type Entry struct {
	Name   string `json:"name"`   // what jobs and clients call it
	Path   string `json:"path"`   // file (GGUF) or directory (HF layout)
	Format string `json:"format"` // "gguf" or "hf"
	Size   int64  `json:"size"`   // bytes (a directory: sum of its files)
	Digest string `json:"digest"` // sha256 hex of the GGUF file, or of an HF dir's config.json
}

// ShortDigest is the first 12 hex digits: enough to tell files apart in
// attributes and meta without spending their length limits.
func (e Entry) ShortDigest() string {
	if len(e.Digest) > 12 {
		return e.Digest[:12]
	}
	return e.Digest
}

// Scanner walks a model directory. It caches digests by (path, size,
// mtime), so a refresh every fingerprint period re-hashes only files that
// changed — hashing a 70 GB model every 30 s is not an option.
type Scanner struct {
	dir string

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	size   int64
	mtime  time.Time
	digest string
}

// NewScanner scans dir.
func NewScanner(dir string) *Scanner { return &Scanner{dir: dir, cache: map[string]cached{}} }

// Dir is the directory scanned.
func (s *Scanner) Dir() string { return s.dir }

// Scan lists the models: every *.gguf file at the top level or one
// directory down, and every directory at the top level holding a
// config.json (a Hugging Face layout, as vLLM, SGLang and TGI load). The
// result is sorted by name; of two models with the same name the first in
// directory order wins (a node should not stage one name twice).
func (s *Scanner) Scan() ([]Entry, error) { return s.scan(true) }

// ScanCached lists the models like Scan but hashes nothing: a file whose
// digest is not cached yet has an empty Digest. The driver's fingerprint
// uses it so the agent's first fingerprint never waits on hashing a large
// model; a background Scan fills the cache.
func (s *Scanner) ScanCached() ([]Entry, error) { return s.scan(false) }

func (s *Scanner) scan(hash bool) ([]Entry, error) {
	top, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read model dir %s: %w", s.dir, err)
	}
	var out []Entry
	seen := map[string]bool{}
	add := func(e Entry) {
		if seen[e.Name] {
			return
		}
		seen[e.Name] = true
		out = append(out, e)
	}
	live := map[string]bool{}
	for _, de := range top {
		p := filepath.Join(s.dir, de.Name())
		switch {
		case !de.IsDir() && isGGUF(de.Name()):
			e, err := s.gguf(p, hash)
			if err != nil {
				return nil, err
			}
			live[p] = true
			add(e)
		case de.IsDir():
			if _, err := os.Stat(filepath.Join(p, "config.json")); err == nil {
				e, err := s.hfDir(p, hash)
				if err != nil {
					return nil, err
				}
				live[filepath.Join(p, "config.json")] = true
				add(e)
				continue
			}
			sub, err := os.ReadDir(p)
			if err != nil {
				continue // unreadable subdirectory: not a model
			}
			for _, se := range sub {
				if se.IsDir() || !isGGUF(se.Name()) {
					continue
				}
				sp := filepath.Join(p, se.Name())
				e, err := s.gguf(sp, hash)
				if err != nil {
					return nil, err
				}
				live[sp] = true
				add(e)
			}
		}
	}
	s.mu.Lock()
	for p := range s.cache {
		if hash && !live[p] {
			delete(s.cache, p) // removed or renamed files leave the cache
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func isGGUF(name string) bool { return strings.EqualFold(filepath.Ext(name), ".gguf") }

// ModelName is the name a GGUF file is served under: its base name without
// the extension.
func ModelName(path string) string {
	return strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
}

func (s *Scanner) gguf(p string, hash bool) (Entry, error) {
	d, size, err := s.digest(p, hash)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Name: ModelName(p), Path: p, Format: "gguf", Size: size, Digest: d}, nil
}

func (s *Scanner) hfDir(p string, hash bool) (Entry, error) {
	d, _, err := s.digest(filepath.Join(p, "config.json"), hash)
	if err != nil {
		return Entry{}, err
	}
	var size int64
	err = filepath.WalkDir(p, func(_ string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		info, err := de.Info()
		if err == nil {
			size += info.Size()
		}
		return nil
	})
	if err != nil {
		return Entry{}, fmt.Errorf("size of model dir %s: %w", p, err)
	}
	return Entry{Name: filepath.Base(p), Path: p, Format: "hf", Size: size, Digest: d}, nil
}

func (s *Scanner) digest(p string, hash bool) (string, int64, error) {
	info, err := os.Stat(p)
	if err != nil {
		return "", 0, fmt.Errorf("stat model %s: %w", p, err)
	}
	s.mu.Lock()
	c, ok := s.cache[p]
	s.mu.Unlock()
	if ok && c.size == info.Size() && c.mtime.Equal(info.ModTime()) {
		return c.digest, info.Size(), nil
	}
	if !hash {
		return "", info.Size(), nil
	}
	f, err := os.Open(p)
	if err != nil {
		return "", 0, fmt.Errorf("open model %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", 0, fmt.Errorf("hash model %s: %w", p, err)
	}
	d := hex.EncodeToString(h.Sum(nil))
	s.mu.Lock()
	s.cache[p] = cached{size: info.Size(), mtime: info.ModTime(), digest: d}
	s.mu.Unlock()
	return d, info.Size(), nil
}

// cachedDigests counts cached digests (tests use it to see that a rescan did not
// re-hash).
func (s *Scanner) cachedDigests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.cache)
}

// AttrName makes a model name safe inside a Nomad attribute key: anything
// but letters, digits, '-' and '_' becomes '_' (a '.' would read as a
// nesting level in `${attr.driver.llorch.model.<name>.size}`).
func AttrName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// Attributes are the node attributes for the catalog (keys without the
// driver prefix): "models" is the sorted, comma-separated list of names
// (constrain with set_contains), and per model "model.<name>.size" (bytes,
// unit-less so Nomad compares it numerically) and "model.<name>.digest".
func Attributes(entries []Entry) map[string]string {
	names := make([]string, 0, len(entries))
	out := map[string]string{}
	for _, e := range entries {
		names = append(names, e.Name)
		k := "model." + AttrName(e.Name) + "."
		out[k+"size"] = strconv.FormatInt(e.Size, 10)
		if e.Digest != "" { // not hashed yet; "" would delete the attribute
			out[k+"digest"] = e.ShortDigest()
		}
	}
	out["models"] = strings.Join(names, ",")
	out["models.count"] = strconv.Itoa(len(entries))
	return out
}

// MaxCompact is Consul's limit on a meta value.
const MaxCompact = 512

// EncodeCompact renders the catalog for one Consul meta value (≤512 bytes):
// "name:size:digest12;..." sorted by name. When that is too long it drops
// the digests, then keeps as many names as fit and ends with "+N" (N models
// left out), so a reader always knows the list is partial.
func EncodeCompact(entries []Entry) string {
	sorted := append([]Entry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	full := make([]string, len(sorted))
	short := make([]string, len(sorted))
	for i, e := range sorted {
		name := compactName.Replace(e.Name)
		full[i] = fmt.Sprintf("%s:%d:%s", name, e.Size, e.ShortDigest())
		short[i] = name
	}
	if s := strings.Join(full, ";"); len(s) <= MaxCompact {
		return s
	}
	if s := strings.Join(short, ";"); len(s) <= MaxCompact {
		return s
	}
	var b strings.Builder
	for i, n := range short {
		more := fmt.Sprintf("+%d", len(short)-i)
		sep := 0
		if b.Len() > 0 {
			sep = 1
		}
		// Room for this name and, if it is not the last, a "+N" after it.
		if b.Len()+sep+len(n)+1+len(more) > MaxCompact {
			if b.Len() > 0 {
				b.WriteByte(';')
			}
			b.WriteString(more)
			return b.String()
		}
		if sep == 1 {
			b.WriteByte(';')
		}
		b.WriteString(n)
	}
	return b.String()
}

// compactName keeps the compact form's separators out of names.
var compactName = strings.NewReplacer(";", "_", ":", "_")

// DecodeCompact parses EncodeCompact's output. Partial reports how many
// models were left out (the "+N" marker); sizes and digests are empty when
// they were dropped for length.
func DecodeCompact(s string) (entries []Entry, leftOut int) {
	if s == "" {
		return nil, 0
	}
	for _, part := range strings.Split(s, ";") {
		if strings.HasPrefix(part, "+") {
			if n, err := strconv.Atoi(part[1:]); err == nil {
				leftOut = n
			}
			continue
		}
		f := strings.SplitN(part, ":", 3)
		e := Entry{Name: f[0]}
		if len(f) == 3 {
			e.Size, _ = strconv.ParseInt(f[1], 10, 64)
			e.Digest = f[2]
		}
		if e.Name != "" {
			entries = append(entries, e)
		}
	}
	return entries, leftOut
}
