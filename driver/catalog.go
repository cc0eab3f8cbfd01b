package driver

import (
	"sync"

	"github.com/llorch/llorch/catalog"
	"github.com/llorch/llorch/internal/nomadpb/structs"
)

// catalogState fingerprints the node's model_dir. Listing is synchronous
// and cheap; hashing runs in the background (a first digest of a 70 GB file
// takes minutes, and the agent waits at most 50 s for a first fingerprint),
// so digests appear in a later fingerprint.
type catalogState struct {
	mu      sync.Mutex
	scanner *catalog.Scanner
	hashing bool
	last    []catalog.Entry
	err     error
}

// catalogEntries lists the models in model_dir and starts a background
// hash of any not hashed yet. With no model_dir it returns nil.
func (d *Driver) catalogEntries() ([]catalog.Entry, error) {
	dir := d.config().ModelDir
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if dir == "" {
		c.scanner, c.last, c.err = nil, nil, nil
		return nil, nil
	}
	if c.scanner == nil || c.scanner.Dir() != dir {
		c.scanner = catalog.NewScanner(dir)
	}
	entries, err := c.scanner.ScanCached()
	c.last, c.err = entries, err
	if err != nil {
		return nil, err
	}
	unhashed := false
	for _, e := range entries {
		unhashed = unhashed || e.Digest == ""
	}
	if unhashed && !c.hashing {
		c.hashing = true
		s := c.scanner
		go func() { // owned by the scanner's lifetime; ends after one pass
			if _, err := s.Scan(); err != nil {
				d.log.Warn("model catalog: hashing failed", "dir", s.Dir(), "error", err)
			}
			c.mu.Lock()
			c.hashing = false
			c.mu.Unlock()
		}()
	}
	return entries, nil
}

// catalogAttributes are the node attributes for the model catalog:
// driver.llorch.models (comma list; jobs constrain with set_contains),
// driver.llorch.models.count, driver.llorch.model.<name>.size/.digest.
func (d *Driver) catalogAttributes() map[string]*structs.Attribute {
	entries, err := d.catalogEntries()
	if err != nil {
		d.log.Warn("model catalog unreadable", "error", err)
		return map[string]*structs.Attribute{"driver." + PluginName + ".models.error": strAttr(err.Error())}
	}
	if d.config().ModelDir == "" {
		return nil
	}
	out := map[string]*structs.Attribute{}
	for k, v := range catalog.Attributes(entries) {
		out["driver."+PluginName+"."+k] = strAttr(v)
	}
	return out
}

// catalogCompact is the catalog for the Consul meta node_models of this
// node's engines (instance.Instance.NodeModels).
func (d *Driver) catalogCompact() string {
	d.catalog.mu.Lock()
	last := d.catalog.last
	d.catalog.mu.Unlock()
	return catalog.EncodeCompact(last)
}
