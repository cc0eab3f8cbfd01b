package keys

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Store is the live key set, merged from its sources (the keys file, a
// Consul KV prefix). Readers take Current without locking; a source's
// update rebuilds the whole set, and one that would make it invalid (a
// name or secret in two sources) is refused, keeping the last good set.
type Store struct {
	cur   atomic.Pointer[Set]
	mu    sync.Mutex
	parts map[string][]Key
}

// NewStore is an empty store.
func NewStore() *Store {
	st := &Store{parts: map[string][]Key{}}
	st.cur.Store(&Set{})
	return st
}

// Current is the key set now in force.
func (st *Store) Current() *Set { return st.cur.Load() }

// Replace sets the keys one source contributes and rebuilds the set.
func (st *Store) Replace(source string, keys []Key) (*Set, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	next := make(map[string][]Key, len(st.parts)+1)
	for k, v := range st.parts {
		next[k] = v
	}
	next[source] = keys
	srcs := make([]string, 0, len(next))
	for k := range next {
		srcs = append(srcs, k)
	}
	sort.Strings(srcs)
	var all []Key
	for _, s := range srcs {
		all = append(all, next[s]...)
	}
	set, err := NewSet(all)
	if err != nil {
		return nil, fmt.Errorf("keys from %s: %w", source, err)
	}
	st.parts = next
	st.cur.Store(set)
	return set, nil
}
