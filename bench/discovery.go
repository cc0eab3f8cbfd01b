// Discovery in Consul: how fast a registration change at 1,000 and 10,000
// instances reaches a blocking-query watcher.

package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/registry/consul"
)

// watcher runs a consul.Watcher and reports each snapshot's size.
type watcher struct {
	mu   sync.Mutex
	last registry.Snapshot
	when time.Time
	ch   chan struct{}
}

func newWatcher(ctx context.Context, cc *consulapi.Client) *watcher {
	w := &watcher{ch: make(chan struct{}, 1)}
	src := &consul.Watcher{Client: cc, WaitTime: 30 * time.Second}
	go src.Watch(ctx, func(s registry.Snapshot) {
		w.mu.Lock()
		w.last, w.when = s, time.Now()
		w.mu.Unlock()
		select {
		case w.ch <- struct{}{}:
		default:
		}
	})
	return w
}

// until waits for a snapshot that satisfies cond; it returns when it came.
func (w *watcher) until(d time.Duration, cond func(registry.Snapshot) bool) (time.Time, bool) {
	deadline := time.After(d)
	for {
		w.mu.Lock()
		s, at := w.last, w.when
		w.mu.Unlock()
		if cond(s) {
			return at, true
		}
		select {
		case <-w.ch:
		case <-deadline:
			return time.Time{}, false
		}
	}
}

func has(id string) func(registry.Snapshot) bool {
	return func(s registry.Snapshot) bool {
		for _, in := range s.Instances {
			if in.ID == id {
				return true
			}
		}
		return false
	}
}

func discoveryBench(e *env, quick bool) {
	sizes := []int{1000, 10000}
	if quick {
		sizes = []int{1000}
	}
	for _, n := range sizes {
		section := fmt.Sprintf("discovery, %d instances in Consul", n)
		t0 := time.Now()
		if err := registerMany(e.cc, n); err != nil {
			notMeasured(section, "registration", err.Error())
			continue
		}
		regTime := time.Since(t0)
		want := n + 3
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		w := newWatcher(ctx, e.cc)
		at, ok := w.until(60*time.Second, func(s registry.Snapshot) bool { return len(s.Instances) >= want })
		if !ok {
			notMeasured(section, "snapshot build", "the snapshot never held every instance")
			cancel()
			continue
		}
		add(section, "first snapshot (query + decode + build)", ms(at.Sub(start)), fmt.Sprintf("registering took %v", regTime.Round(time.Millisecond)), "", nil)
		// One change: how long until the router's view has it.
		var delays []time.Duration
		for k := 0; k < 5; k++ {
			id := fmt.Sprintf("bench-change-%d-%d", n, k)
			t1 := time.Now()
			if err := e.cc.Agent().ServiceRegister(benchReg(id, 40000+k)); err != nil {
				break
			}
			if at, ok := w.until(10*time.Second, has(id)); ok {
				delays = append(delays, at.Sub(t1))
			}
		}
		sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
		if len(delays) > 0 {
			p50 := delays[len(delays)/2]
			add(section, "one change visible (p50 of 5)", ms(p50), "max "+ms(delays[len(delays)-1]), "≤500 ms", b(p50 <= 500*time.Millisecond))
		}
		cancel()
		deregisterMany(e.cc, n)
		for k := 0; k < 5; k++ {
			e.cc.Agent().ServiceDeregister(fmt.Sprintf("bench-change-%d-%d", n, k))
		}
	}
}

func benchReg(id string, port int) *consulapi.AgentServiceRegistration {
	in := registry.Instance{ID: id, Service: registry.DefaultServiceName, Address: "127.0.0.2", Port: port, Model: "scale", Engine: "fixture", NodeID: "bench-node", Slots: 4}
	meta, _ := in.Meta()
	return &consulapi.AgentServiceRegistration{ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta}
}

// registerMany puts n instances on 100 catalog nodes (parallel batches):
// the shape of a large fleet, without n agents.
func registerMany(cc *consulapi.Client, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				node := fmt.Sprintf("bench-n%03d", i%100)
				in := registry.Instance{ID: fmt.Sprintf("scale-%05d", i), Service: registry.DefaultServiceName, Address: "10.99.0.1", Port: 10000 + i%50000,
					Model: fmt.Sprintf("scale-%d", i%10), Engine: "fixture", NodeID: node, Slots: 4}
				meta, _ := in.Meta()
				_, err := cc.Catalog().Register(&consulapi.CatalogRegistration{Node: node, Address: "10.99.0.1",
					Service: &consulapi.AgentService{ID: in.ID, Service: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags(), Meta: meta}}, nil)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func deregisterMany(cc *consulapi.Client, n int) {
	for i := 0; i < 100; i++ {
		cc.Catalog().Deregister(&consulapi.CatalogDeregistration{Node: fmt.Sprintf("bench-n%03d", i)}, nil)
	}
}
