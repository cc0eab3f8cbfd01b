package main

import (
	"fmt"
	"sync"
	"time"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router"
	"github.com/llorch/llorch/router/discovery"
	"github.com/llorch/llorch/scheduler"
)

// churnBench is placement latency while the snapshot changes every 100 ms
// (a fleet where instances come, go and change health all the time): the
// router's path, where each delivery is indexed off the request path
// (SchedulerPlacer.Prepare) before it is published, against the old one,
// where the first request after a delivery built the index.
func churnBench(quick bool) {
	d := 3 * time.Second
	if quick {
		d = time.Second
	}
	const section = "placement while the snapshot changes every 100 ms"
	for _, n := range []int{1000, 10000} {
		for _, prepared := range []bool{true, false} {
			lat, deliveries, err := placeUnderChurn(n, d, prepared)
			if err != nil {
				notMeasured(section, fmt.Sprintf("%d instances", n), err.Error())
				continue
			}
			p99 := pct(lat, 0.99)
			fig := fmt.Sprintf("%d instances, p99", n)
			// p99.99 and the worst show the spikes p99 hides: a delivery
			// is ~30 of the ~10^5 placements.
			val := fmt.Sprintf("%v (p99.99 %v, max %v; %d placements, %d deliveries)", p99.Round(100*time.Nanosecond),
				pct(lat, 0.9999).Round(time.Microsecond), pct(lat, 1).Round(time.Microsecond), len(lat), deliveries)
			if prepared {
				add(section, fig, val, "", "≤50 µs", b(p99 <= 50*time.Microsecond))
			} else {
				add(section, fig+", index built on the request path (before)", "", val, "", nil)
			}
		}
	}
}

// placeUnderChurn places requests back to back for d while another
// goroutine delivers a changed snapshot every 100 ms, as the router's
// discovery does.
func placeUnderChurn(n int, d time.Duration, prepared bool) (lat []time.Duration, deliveries int, err error) {
	sp, err := router.NewSchedulerPlacer(scheduler.DefaultProfileConfig())
	if err != nil {
		return nil, 0, err
	}
	base := make([]registry.Instance, n)
	for i := range base {
		base[i] = registry.Instance{ID: fmt.Sprintf("inst-%05d", i), NodeID: fmt.Sprintf("node-%04d", i/4), PoolID: "p", Address: "10.0.0.1", Port: 8000 + i%1000,
			Model: "m", Slots: 8, Ctx: 8192, Health: registry.HealthPassing, APIs: []string{"/v1/chat/completions"}}
	}
	view := discovery.NewView()
	deliver := func(idx uint64) {
		list := make([]registry.Instance, n)
		copy(list, base)
		list[int(idx)%n].Draining = true // one instance changes each time
		snap := discovery.Normalize(registry.Snapshot{Instances: list, Index: idx})
		if prepared {
			sp.Prepare(*snap)
		}
		view.Publish(snap)
	}
	deliver(1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for idx := uint64(2); ; idx++ {
			select {
			case <-stop:
				return
			case <-t.C:
				deliver(idx)
				deliveries++
			}
		}
	}()
	sessions := make([]string, 97)
	for i := range sessions {
		sessions[i] = fmt.Sprint("session-", i)
	}
	req := router.PlaceRequest{Model: "m", Path: "/v1/chat/completions"}
	lat = make([]time.Duration, 0, 1<<20)
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		req.Session = sessions[i%len(sessions)]
		t0 := time.Now()
		if _, err := sp.Place(req, *view.Current()); err != nil {
			close(stop)
			wg.Wait()
			return nil, 0, err
		}
		lat = append(lat, time.Since(t0))
	}
	close(stop)
	wg.Wait()
	return lat, deliveries, nil
}
