package keys

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"gopkg.in/yaml.v3"
)

// ParseFile reads a keys document: YAML, or JSON (which YAML reads too).
// Unknown fields are errors, so a misspelt limit is not silently no limit.
// An empty document is an error too: it is what a reader sees of a file
// being rewritten in place, and must not revoke every key (`keys: []` is
// the way to have none).
func ParseFile(b []byte) (File, error) {
	var f File
	if len(bytes.TrimSpace(b)) == 0 {
		return f, errors.New("keys file is empty (write `keys: []` for no keys)")
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return f, fmt.Errorf("keys file: %w", err)
	}
	for i := range f.Keys {
		if err := f.Keys[i].validate(); err != nil {
			return f, fmt.Errorf("keys file: %w", err)
		}
	}
	return f, nil
}

// ReadFile reads and validates the keys file at path.
func ReadFile(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("keys file: %w", err)
	}
	f, err := ParseFile(b)
	if err != nil {
		return f, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// WriteFile writes f to path atomically with mode 0600 (digests are not
// secrets, but the file says who may do what): JSON for a .json path,
// YAML otherwise.
func WriteFile(path string, f File) error {
	var b []byte
	var err error
	if strings.HasSuffix(path, ".json") {
		b, err = json.MarshalIndent(f, "", "  ")
		b = append(b, '\n')
	} else {
		b, err = yaml.Marshal(f)
	}
	if err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".keys-*")
	if err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keys file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("keys file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	return os.Rename(tmp.Name(), path)
}

// FileSource names the keys file's part of a Store.
const FileSource = "file"

// LoadFile reads path into the store (start-up: an error is fatal).
func (st *Store) LoadFile(path string) (*Set, error) {
	f, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return st.Replace(FileSource, f.Keys)
}

// WatchPoll is how often WatchFile re-reads the file.
var WatchPoll = time.Second

// WatchFile re-reads path on SIGHUP and whenever its content changes
// (polled every WatchPoll), until ctx ends. A file that fails to parse
// keeps the current keys and is logged once per distinct error.
func (st *Store) WatchFile(ctx context.Context, path string, log hclog.Logger) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(WatchPoll)
	defer tick.Stop()
	last, _ := os.ReadFile(path)
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			last = nil // a SIGHUP reloads even an unchanged file
		case <-tick.C:
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Equal(b, last) {
			continue
		}
		var set *Set
		if err == nil {
			var f File
			if f, err = ParseFile(b); err == nil {
				set, err = st.Replace(FileSource, f.Keys)
			}
		}
		if err != nil {
			if err.Error() != lastErr {
				log.Warn("keys file re-read failed; keeping the current keys", "path", path, "error", err)
				lastErr = err.Error()
			}
			continue
		}
		last, lastErr = b, ""
		log.Info("keys reloaded", "source", path, "keys", set.Len())
	}
}
