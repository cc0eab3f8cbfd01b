package keys

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"gopkg.in/yaml.v3"
)

// ConsulSource names the Consul KV part of a Store.
const ConsulSource = "consul"

// consulWait bounds one blocking query; retryPause is the pause after a
// failed one.
const (
	consulWait = 5 * time.Minute
	retryPause = 2 * time.Second
)

// parseKV reads the keys under a KV prefix: one key per entry, as YAML or
// JSON; a key without a name takes its entry's last path segment.
func parseKV(pairs consulapi.KVPairs) ([]Key, error) {
	var out []Key
	for _, p := range pairs {
		if strings.HasSuffix(p.Key, "/") || len(bytes.TrimSpace(p.Value)) == 0 {
			continue // a folder marker
		}
		var k Key
		dec := yaml.NewDecoder(bytes.NewReader(p.Value))
		dec.KnownFields(true)
		if err := dec.Decode(&k); err != nil {
			return nil, fmt.Errorf("consul key %s: %w", p.Key, err)
		}
		if k.Name == "" {
			k.Name = path.Base(p.Key)
		}
		if err := k.validate(); err != nil {
			return nil, fmt.Errorf("consul key %s: %w", p.Key, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// LoadConsul reads the keys under prefix once (start-up).
func (st *Store) LoadConsul(ctx context.Context, kv *consulapi.KV, prefix string) (uint64, error) {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	pairs, meta, err := kv.List(prefix, q)
	if err != nil {
		return 0, fmt.Errorf("consul keys under %s: %w", prefix, err)
	}
	keys, err := parseKV(pairs)
	if err != nil {
		return 0, err
	}
	if _, err := st.Replace(ConsulSource, keys); err != nil {
		return 0, err
	}
	return meta.LastIndex, nil
}

// WatchConsul follows prefix with blocking queries from index until ctx
// ends. A bad entry keeps the current keys and is logged once per distinct
// error; an unreachable Consul keeps them too.
func (st *Store) WatchConsul(ctx context.Context, kv *consulapi.KV, prefix string, index uint64, log hclog.Logger) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	lastErr := ""
	warn := func(msg string, err error) {
		if err.Error() != lastErr {
			log.Warn(msg, "prefix", prefix, "error", err)
			lastErr = err.Error()
		}
	}
	for ctx.Err() == nil {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: consulWait}).WithContext(ctx)
		pairs, meta, err := kv.List(prefix, q)
		if err != nil {
			if ctx.Err() == nil {
				warn("consul keys query failed; keeping the current keys", err)
				sleep(ctx, retryPause)
			}
			continue
		}
		if meta.LastIndex == index {
			continue
		}
		if meta.LastIndex < index {
			index = 0 // Consul's index went backwards (a restore): start over
			continue
		}
		index = meta.LastIndex
		keys, err := parseKV(pairs)
		var set *Set
		if err == nil {
			set, err = st.Replace(ConsulSource, keys)
		}
		if err != nil {
			warn("consul keys rejected; keeping the current keys", err)
			continue
		}
		lastErr = ""
		log.Info("keys reloaded", "source", "consul:"+prefix, "keys", set.Len())
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// WatchPeers counts the passing instances of the routers' Consul service
// and calls set with the count (at least 1: this router) whenever it
// changes, until ctx ends. An unreachable Consul keeps the last count.
func WatchPeers(ctx context.Context, health *consulapi.Health, service string, set func(n int), log hclog.Logger) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	var index uint64
	last := -1
	for ctx.Err() == nil {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: consulWait}).WithContext(ctx)
		entries, meta, err := health.Service(service, "", true, q)
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("router count query failed; keeping the last count", "service", service, "error", err)
				sleep(ctx, retryPause)
			}
			continue
		}
		if meta.LastIndex < index {
			index = 0
			continue
		}
		index = meta.LastIndex
		n := max(1, len(entries))
		if n != last {
			log.Info("live routers changed; each enforces its share of every key limit", "routers", n, "service", service)
			set(n)
			last = n
		}
	}
}
